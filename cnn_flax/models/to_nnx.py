"""Any zoo model with its weights as a Flax NNX module, for research code written in NNX.

Flax recommends NNX for new code and keeps Linen, which these models are written in. `flax.nnx.bridge.ToNNX`
wraps a Linen module as an NNX one; `to_nnx` does that and puts the given variables in (a checkpoint's,
pretrained weights), without running the model's initialisation: the wrapper keeps each Linen collection as
NNX variables of the matching type (`params` -> `nnx.Param`, `batch_stats` -> `nnx.BatchStat`), exactly as it
would after `lazy_init`.

    nnx_model = to_nnx(model, variables)
    probabilities = jax.nn.softmax(nnx_model(images, train=False))
    # training: BatchNorm statistics are updated in place, dropout draws from the rngs given
    logits = nnx_model(images, train=True, rngs=nnx.Rngs(dropout=0), mutable=["batch_stats"])
    optimizer = nnx.Optimizer(nnx_model, optax.sgd(0.01), wrt=nnx.Param)

`from_nnx` gives the Linen variables back (to save them as a checkpoint or safetensors file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import nnx
from flax.nnx import bridge


def to_nnx(model: nn.Module, variables: Mapping[str, Any], *, seed: int = 0) -> bridge.ToNNX:
    """`model` as an NNX module holding `variables` (every collection); `seed` starts its default rng streams."""
    wrapped = bridge.ToNNX(model, rngs=nnx.Rngs(seed))
    plain = {collection: _plain(tree) for collection, tree in variables.items()}
    for name, value in bridge.variables.linen_vars_to_nnx_attrs(plain).items():
        setattr(wrapped, name, nnx.data(value))
    return wrapped


def from_nnx(module: bridge.ToNNX) -> dict[str, Any]:
    """The Linen variables ({'params': ..., 'batch_stats': ...}) an NNX-wrapped model holds now."""
    attrs = {name: value for name, value in vars(module).items()
             if not name.startswith(("to_nnx__", "_pytree__", "_object__"))}
    linen = bridge.variables.nnx_attrs_to_linen_vars(attrs)
    return {collection: jax.tree_util.tree_map(lambda leaf: leaf, dict(tree)) for collection, tree in linen.items()}


def _plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {key: _plain(value) for key, value in tree.items()}
    return jax.numpy.asarray(tree)
