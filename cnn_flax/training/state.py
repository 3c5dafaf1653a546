"""The train state: only arrays, so that Orbax can save it and jit/pmap can donate it.

The model's apply function and the optimizer stay outside (closed over by the step functions); random
keys are derived from the step number, so resuming needs nothing but this state.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @classmethod
    def create(cls, variables: dict[str, Any], tx: optax.GradientTransformation) -> "TrainState":
        params = variables["params"]
        return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                   opt_state=tx.init(params))

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}
