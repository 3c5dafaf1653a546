"""Parameter groups for transfer learning: frozen layers and per-layer learning-rate factors.

Both are chosen by regular expressions searched in a parameter's path, its module names joined by '/'
("block5_conv1/kernel", "fc1_bn/scale"), so one pattern names a whole block. Frozen parameters take
optax's `set_to_zero` through `multi_transform`: their updates are exactly zero (not merely small) and
the optimizer keeps no state for them, which is what makes freezing VGG16's base cheap. A BatchNorm
layer under a frozen pattern keeps its running statistics too (the step calls `keep_frozen_stats`);
otherwise fine-tuning would still drift the frozen layers through their statistics. A learning-rate
factor multiplies the update the optimizer computed, which for SGD and Adam is the same as multiplying
that group's learning rate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cnn_flax.errors import UserError

TRAINABLE, FROZEN = "trainable", "frozen"


def path_name(path: tuple) -> str:
    return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)


def param_paths(tree: Any) -> list[str]:
    return [path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def compile_pattern(pattern: str, key: str) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise UserError(f"{key}={pattern!r} is not a regular expression ({error}); e.g. '^block[1-4]_'") from None


def _multipliers(optimizer: Mapping[str, Any]) -> list[tuple[re.Pattern, float]]:
    given = optimizer.get("lr_multipliers") or {}
    out = []
    for pattern, factor in dict(given).items():
        if not isinstance(factor, int | float) or factor < 0:
            raise UserError(f"optimizer.lr_multipliers[{pattern!r}]={factor!r} must be a number >= 0")
        out.append((compile_pattern(pattern, f"optimizer.lr_multipliers key {pattern!r}"), float(factor)))
    return out


def frozen_mask(tree: Any, pattern: str) -> Any:
    """A tree of bools like `tree`: True where the leaf's path matches `pattern`."""
    regex = compile_pattern(pattern, "optimizer.freeze")
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(regex and regex.search(path_name(p))), tree)


def check_freeze(params: Any, pattern: str) -> None:
    """A pattern that freezes nothing or everything is a mistake worth stopping for."""
    regex = compile_pattern(pattern, "optimizer.freeze")
    if regex is None:
        return
    paths = param_paths(params)
    frozen = [p for p in paths if regex.search(p)]
    if not frozen:
        raise UserError(f"optimizer.freeze={pattern!r} matches no parameter; paths look like {paths[0]!r} … "
                        f"{paths[-1]!r}")
    if len(frozen) == len(paths):
        raise UserError(f"optimizer.freeze={pattern!r} freezes every parameter; nothing would train")


def scale_by_path(multipliers: list[tuple[re.Pattern, float]]) -> optax.GradientTransformation:
    """Multiplies each update by the factor of the first pattern its path matches (1 when none does)."""

    def factor(path: tuple) -> float:
        name = path_name(path)
        return next((f for regex, f in multipliers if regex.search(name)), 1.0)

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda p, u: u * jnp.asarray(factor(p), u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def with_param_groups(optimizer: Mapping[str, Any], tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` with optimizer.lr_multipliers applied and optimizer.freeze's parameters never updated."""
    multipliers = _multipliers(optimizer)
    if multipliers:
        tx = optax.chain(tx, scale_by_path(multipliers))
    pattern = optimizer.get("freeze") or ""
    if not compile_pattern(pattern, "optimizer.freeze"):
        return tx

    def labels(params: Any) -> Any:
        check_freeze(params, pattern)
        return jax.tree_util.tree_map(lambda frozen: FROZEN if frozen else TRAINABLE, frozen_mask(params, pattern))

    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def keep_frozen_stats(pattern: str, params: Any, old: Any, new: Any) -> Any:
    """BatchNorm statistics: the old values for layers whose parameters are all frozen, the new ones elsewhere.

    A layer without parameters (no scale, no bias) is frozen when the statistics' own path matches.
    """
    regex = compile_pattern(pattern, "optimizer.freeze")
    if regex is None or not jax.tree_util.tree_leaves(old):
        return new
    param_names = param_paths(params)

    def frozen(path: tuple) -> bool:
        layer = path_name(path).rpartition("/")[0] + "/"
        own = [name for name in param_names if name.startswith(layer)]
        return all(regex.search(name) for name in own) if own else bool(regex.search(path_name(path)))

    return jax.tree_util.tree_map_with_path(lambda p, o, n: o if frozen(p) else n, old, new)
