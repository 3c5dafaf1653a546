"""SGD and Adam computed as Keras computes them, so the deck's runs and Keras checkpoints carry over exactly.

optax's sgd keeps the momentum of the raw gradients and multiplies by the learning rate afterwards
(v = m·v + g; w -= lr·v). Keras puts the learning rate inside the velocity (v = m·v − lr·g; w += v;
Nesterov: w += m·v − lr·g with the new v). With a constant rate the two are the same walk; right after
a piecewise drop they are not: optax applies the new rate to the whole accumulated velocity at once,
Keras only to the new gradients, the old velocity fading out at its old scale. Keras's Adam divides by
sqrt(v) + eps with the bias correction folded into the step size (alpha = lr·sqrt(1 − b2^t)/(1 − b1^t)),
where optax adds eps to the bias-corrected sqrt(v̂); the two differ while v is small.

The states hold exactly Keras's optimizer variables (the iteration count, and per parameter SGD's
`momentum` or Adam's `momentum` and `velocity`), so a Keras checkpoint's optimizer restores into them
one to one (`restore_keras_slots`). The learning rate is read at the iteration count before the update,
as Keras reads its schedule.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cnn_flax.errors import UserError

Schedule = Callable[[jax.Array], jax.Array]


class KerasSGDState(NamedTuple):
    iterations: jax.Array
    momentum: Any  # parameters-shaped velocities; () when momentum is 0 (Keras then keeps none)


class KerasAdamState(NamedTuple):
    iterations: jax.Array
    momentum: Any  # first moments
    velocity: Any  # second moments


KERAS_STATES = (KerasSGDState, KerasAdamState)
# Keras's optimizer class -> (our state, its slot fields in Keras's per-variable order).
SLOTS = {"sgd": (KerasSGDState, ("momentum",)), "adam": (KerasAdamState, ("momentum", "velocity"))}


def keras_sgd(learning_rate: Schedule, momentum: float = 0.0, nesterov: bool = False) -> optax.GradientTransformation:
    """keras.optimizers.SGD: v = m·v − lr·g; w += v (Nesterov: w += m·v − lr·g with the new v)."""

    def init(params: Any) -> KerasSGDState:
        velocity = jax.tree_util.tree_map(jnp.zeros_like, params) if momentum else ()
        return KerasSGDState(jnp.zeros((), jnp.int32), velocity)

    def update(grads: Any, state: KerasSGDState, params: Any = None) -> tuple[Any, KerasSGDState]:
        del params
        lr = jnp.asarray(learning_rate(state.iterations), jnp.float32)
        if not momentum:
            updates = jax.tree_util.tree_map(lambda g: -(g * lr.astype(g.dtype)), grads)
            return updates, KerasSGDState(state.iterations + 1, ())
        velocity = jax.tree_util.tree_map(lambda v, g: v * jnp.asarray(momentum, v.dtype) - g * lr.astype(g.dtype),
                                          state.momentum, grads)
        if nesterov:
            updates = jax.tree_util.tree_map(
                lambda v, g: v * jnp.asarray(momentum, v.dtype) - g * lr.astype(g.dtype), velocity, grads)
        else:
            updates = velocity
        return updates, KerasSGDState(state.iterations + 1, velocity)

    return optax.GradientTransformation(init, update)


def keras_adam(learning_rate: Schedule, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-7) -> optax.GradientTransformation:
    """keras.optimizers.Adam: m += (g − m)(1 − b1); v += (g² − v)(1 − b2); w −= alpha·m / (sqrt(v) + eps)."""

    def init(params: Any) -> KerasAdamState:
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
        return KerasAdamState(jnp.zeros((), jnp.int32), zeros(), zeros())

    def update(grads: Any, state: KerasAdamState, params: Any = None) -> tuple[Any, KerasAdamState]:
        del params
        lr = jnp.asarray(learning_rate(state.iterations), jnp.float32)
        t = (state.iterations + 1).astype(jnp.float32)
        alpha = lr * jnp.sqrt(1 - jnp.float32(b2) ** t) / (1 - jnp.float32(b1) ** t)
        first = jax.tree_util.tree_map(lambda m, g: m + (g - m) * jnp.asarray(1 - b1, m.dtype), state.momentum, grads)
        second = jax.tree_util.tree_map(lambda v, g: v + (jnp.square(g) - v) * jnp.asarray(1 - b2, v.dtype),
                                        state.velocity, grads)
        updates = jax.tree_util.tree_map(
            lambda m, v: -((m * alpha.astype(m.dtype)) / (jnp.sqrt(v) + jnp.asarray(eps, v.dtype))), first, second)
        return updates, KerasAdamState(state.iterations + 1, first, second)

    return optax.GradientTransformation(init, update)


def build_keras_optimizer(optimizer: Mapping[str, Any], learning_rate: Schedule) -> optax.GradientTransformation:
    """The Keras-exact form of the configured optimizer (optimizer.keras=True)."""
    name = optimizer["name"]
    if name == "sgd":
        return keras_sgd(learning_rate, float(optimizer["momentum"] or 0.0), bool(optimizer["nesterov"]))
    if name == "adam":
        return keras_adam(learning_rate, float(optimizer["b1"]), float(optimizer["b2"]), float(optimizer["eps"]))
    raise UserError(f"optimizer.keras=True exists for sgd and adam, not optimizer.name={name!r}; "
                    "set --config.optimizer.keras=False")


def restore_keras_slots(opt_state: Any, name: str, iterations: int, slots: Mapping[str, Any], source: str) -> Any:
    """`opt_state` with its Keras optimizer state replaced by a Keras checkpoint's (`slots` by Keras's slot name).

    The Keras state may sit anywhere inside a chain of transformations; exactly one must be there and be of
    the file's kind (`name`: 'sgd' or 'adam'), with momentum slots exactly when the file has them.
    """
    kind, fields = SLOTS[name]
    found = [leaf for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_keras_state)
             if _is_keras_state(leaf)]
    if not found:
        raise UserError(f"{source} holds Keras {name} optimizer state, which continues exactly only with "
                        "Keras's update rule: set --config.optimizer.keras=True (or drop the state by training "
                        "from its weights alone with optimizer.keras=False, which warns)")
    if len(found) > 1 or not isinstance(found[0], kind):
        raise UserError(f"{source} holds Keras {name} optimizer state but the configured optimizer is "
                        f"{type(found[0]).__name__.removeprefix('Keras').removesuffix('State').lower()}; set "
                        f"--config.optimizer.name={name}")
    if name == "sgd" and bool(found[0].momentum) != bool(slots):
        has = "momentum slots" if slots else "no momentum slots (Keras SGD with momentum=0)"
        raise UserError(f"{source} holds {has} but optimizer.momentum={'0' if not found[0].momentum else 'is set'}; "
                        "set --config.optimizer.momentum as the Keras run had it")

    def replace(leaf: Any) -> Any:
        if not _is_keras_state(leaf):
            return leaf
        values = {field: _cast_like(getattr(leaf, field), slots[field]) for field in fields if field in slots}
        return leaf._replace(iterations=jnp.asarray(iterations, leaf.iterations.dtype), **values)

    return jax.tree_util.tree_map(replace, opt_state, is_leaf=_is_keras_state)


def _is_keras_state(node: Any) -> bool:
    return isinstance(node, KERAS_STATES)


def _cast_like(template: Any, values: Any) -> Any:
    return jax.tree_util.tree_map(lambda t, v: jnp.asarray(v, dtype=t.dtype), template, values)
