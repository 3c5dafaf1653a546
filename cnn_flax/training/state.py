"""The train state: only arrays, so that Orbax can save it and jit/pmap can donate it.

The model's apply function and the optimizer stay outside (closed over by the step functions); random
keys are derived from the step number, so resuming needs nothing but this state.

`ema` holds the exponential moving average of the weights ({"params", "batch_stats"}) when the run keeps
one, and is empty otherwise. `lr_scale` is the factor ReduceLROnPlateau puts on the schedule's rate (a
float32 scalar the compiled step reads, so lowering the rate needs no new compilation); `best` is the copy
of the weights (and of their average) that EarlyStopping's restore_best_weights keeps. Each of these three is
empty when unused and then left out of the checkpoint, so runs without them write exactly the checkpoints
they always did (and read the ones written before they existed).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import serialization

FIELDS = ("step", "params", "batch_stats", "opt_state", "ema", "lr_scale", "best")
OPTIONAL = ("ema", "lr_scale", "best")


def present(value: Any) -> bool:
    """Whether an optional field is in use (an unused one is an empty dict)."""
    return not (isinstance(value, dict) and not value)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema: Any = flax.struct.field(default_factory=dict)
    lr_scale: Any = flax.struct.field(default_factory=dict)
    best: Any = flax.struct.field(default_factory=dict)

    @classmethod
    def create(cls, variables: dict[str, Any], tx: optax.GradientTransformation, ema: bool = False,
               lr_scale: bool = False, best: bool = False) -> "TrainState":
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        average = {"params": params, "batch_stats": batch_stats} if ema else {}
        state = cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema=jax.tree_util.tree_map(jnp.copy, average),
                    lr_scale=jnp.ones((), jnp.float32) if lr_scale else {})
        return state.replace(best=jax.tree_util.tree_map(jnp.copy, state.weights())) if best else state

    def weights(self) -> dict[str, Any]:
        """What restore_best_weights keeps and puts back: the variables, and their moving average if kept."""
        return {**self.variables, **({"ema": self.ema} if self.ema else {})}

    def with_weights(self, weights: dict[str, Any]) -> "TrainState":
        """This state with `weights()` of another moment put back (the optimizer state stays as it is)."""
        return self.replace(params=weights["params"], batch_stats=weights["batch_stats"],
                            ema=weights.get("ema", self.ema))

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}

    def averaged(self) -> "TrainState":
        """This state with the moving average in place of the weights: what evaluation with `--ema` sees."""
        if not self.ema:
            raise ValueError("this state keeps no moving average (ema_decay=0)")
        return self.replace(params=self.ema["params"], batch_stats=self.ema["batch_stats"])


def ema_update(average: dict[str, Any], variables: dict[str, Any], decay: float) -> dict[str, Any]:
    """average ← decay·average + (1 − decay)·variables, leaf by leaf (parameters and BatchNorm statistics)."""
    return jax.tree_util.tree_map(lambda a, v: (decay * a + (1.0 - decay) * v).astype(a.dtype), average, variables)


def _fields(state: TrainState) -> list[str]:
    return [name for name in FIELDS if name not in OPTIONAL or present(getattr(state, name))]


def _to_state_dict(state: TrainState) -> dict[str, Any]:
    return {name: serialization.to_state_dict(getattr(state, name)) for name in _fields(state)}


def _from_state_dict(target: TrainState, state: dict[str, Any]) -> TrainState:
    fields = _fields(target)
    missing = [name for name in fields if name not in state]
    if missing:
        raise ValueError(f"the saved train state lacks {', '.join(missing)}")
    return target.replace(**{name: serialization.from_state_dict(getattr(target, name), state[name])
                             for name in fields})


serialization.register_serialization_state(TrainState, _to_state_dict, _from_state_dict, override=True)
