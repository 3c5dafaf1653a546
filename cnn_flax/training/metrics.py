"""clu metric collections accumulated on the device inside the jitted steps, fetched once per epoch.

(No `from __future__ import annotations` here: clu reads the field annotations as classes.)
"""

import flax
import jax
import jax.numpy as jnp
from clu import metrics

from cnn_flax.evaluation.metrics import in_top_k

NEVER = 2**31 - 1


@flax.struct.dataclass
class FirstNonFiniteStep(metrics.Metric):
    """The first optimizer step whose loss was NaN or infinite (NEVER if none), to report it exactly."""

    step: jax.Array

    @classmethod
    def from_model_output(cls, loss: jax.Array, step: jax.Array, **_) -> "FirstNonFiniteStep":
        return cls(jnp.where(jnp.isfinite(loss), NEVER, step).astype(jnp.int32))

    @classmethod
    def empty(cls) -> "FirstNonFiniteStep":
        return cls(jnp.asarray(NEVER, jnp.int32))

    def merge(self, other: "FirstNonFiniteStep") -> "FirstNonFiniteStep":
        return type(self)(jnp.minimum(self.step, other.step))

    def reduce(self) -> "FirstNonFiniteStep":
        return type(self)(jnp.min(self.step))

    def compute(self) -> jax.Array:
        return self.step


Rank5 = metrics.Average.from_fun(
    lambda logits, labels, **_: in_top_k(logits, labels, min(5, logits.shape[-1])).astype(jnp.float32))


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Accuracy
    first_nonfinite_step: FirstNonFiniteStep


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Accuracy
    rank5: Rank5
