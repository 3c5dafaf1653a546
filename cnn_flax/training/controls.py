"""Keras's EarlyStopping and ReduceLROnPlateau as pure state machines: (options, state, epoch, value) -> state.

The deck's readers know these callbacks; their decisions here are Keras's (tf_keras 2.x), comparison for
comparison, so a Keras run's stop epoch and learning rates carry over (tests drive tf_keras's own callbacks
with the same metric sequences). Being pure and frozen, their state is a small dict in each checkpoint's
meta: a run killed at any moment resumes with the same counters and makes the same decisions.

Epochs are 1-based here, as in the history; Keras's callbacks count from 0 (`epoch > 0` there is
`epoch > 1` here). Learning rates are float32 values, as Keras keeps them in a float32 variable.
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from cnn_flax.errors import UserError

MODES = ("auto", "min", "max")


def _check_mode(mode: str, key: str) -> None:
    if mode not in MODES:
        raise UserError(f"{key}.mode={mode!r} is not known; use auto, min or max")


def early_stopping_maximizes(monitor: str, mode: str) -> bool:
    """EarlyStopping's 'auto': greater is better for names ending in acc, accuracy or auc."""
    if mode != "auto":
        return mode == "max"
    return monitor.endswith(("acc", "accuracy", "auc"))


def plateau_maximizes(monitor: str, mode: str) -> bool:
    """ReduceLROnPlateau's and ModelCheckpoint's 'auto': greater is better when the name contains 'acc'."""
    if mode != "auto":
        return mode == "max"
    return "acc" in monitor


def monitored(record: Mapping[str, Any], monitor: str, key: str) -> float:
    """The monitored value of an epoch's record; a name the history does not have is the user's mistake
    (Keras only warns and never acts, which silently disables the callback)."""
    if monitor not in record or record[monitor] is None:
        known = ", ".join(k for k, v in record.items() if isinstance(v, float))
        raise UserError(f"{key}.monitor={monitor!r} is not in the epoch's history record; use one of {known}")
    return float(record[monitor])


def _to_json(value: float) -> float | None:
    return None if math.isinf(value) else value


def _from_json(value: float | None, maximize: bool) -> float:
    return (-math.inf if maximize else math.inf) if value is None else float(value)


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """keras.callbacks.EarlyStopping's arguments (verbose aside); baseline None means none."""

    monitor: str = "val_loss"
    min_delta: float = 0.0
    patience: int = 0
    mode: str = "auto"
    baseline: float | None = None
    restore_best_weights: bool = False
    start_from_epoch: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "EarlyStopping":
        _check_mode(config["mode"], "early_stopping")
        if int(config["patience"]) < 0 or int(config["start_from_epoch"]) < 0:
            raise UserError("early_stopping.patience and early_stopping.start_from_epoch must be 0 or more")
        baseline = config["baseline"]
        return cls(monitor=config["monitor"], min_delta=float(config["min_delta"]), patience=int(config["patience"]),
                   mode=config["mode"], baseline=None if baseline is None else float(baseline),
                   restore_best_weights=bool(config["restore_best_weights"]),
                   start_from_epoch=int(config["start_from_epoch"]))

    @property
    def maximize(self) -> bool:
        return early_stopping_maximizes(self.monitor, self.mode)

    def improves(self, value: float, reference: float) -> bool:
        delta = abs(self.min_delta) if self.maximize else -abs(self.min_delta)
        return bool(np.greater(value - delta, reference) if self.maximize else np.less(value - delta, reference))


@dataclasses.dataclass(frozen=True)
class EarlyStoppingState:
    """`snapshot_epoch`: the epoch whose weights are kept to restore (0: none yet; restore_best_weights only)."""

    wait: int = 0
    best: float | None = None  # None: ±inf, nothing seen yet
    best_epoch: int = 0
    stopped_epoch: int = 0  # 0: not stopped
    snapshot_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "EarlyStoppingState":
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})


def early_stopping_step(options: EarlyStopping, state: EarlyStoppingState, epoch: int,
                        value: float) -> EarlyStoppingState:
    """Keras's on_epoch_end for the 1-based `epoch` whose monitored value is `value`.

    A new `snapshot_epoch` equal to `epoch` means: keep this epoch's weights (they are the best so far, or,
    with restore_best_weights, the first weights Keras keeps before anything improved).
    """
    if epoch - 1 < options.start_from_epoch:
        return state
    if options.restore_best_weights and state.snapshot_epoch == 0:
        state = dataclasses.replace(state, snapshot_epoch=epoch, best_epoch=epoch)
    state = dataclasses.replace(state, wait=state.wait + 1)
    best = _from_json(state.best, options.maximize)
    if options.improves(value, best):
        state = dataclasses.replace(state, best=_to_json(value), best_epoch=epoch,
                                    snapshot_epoch=epoch if options.restore_best_weights else 0)
        if options.baseline is None or options.improves(value, options.baseline):
            state = dataclasses.replace(state, wait=0)
        return state
    if state.wait >= options.patience and epoch > 1:
        state = dataclasses.replace(state, stopped_epoch=epoch)
    return state


@dataclasses.dataclass(frozen=True)
class ReduceLROnPlateau:
    """keras.callbacks.ReduceLROnPlateau's arguments (verbose aside)."""

    monitor: str = "val_loss"
    factor: float = 0.1
    patience: int = 10
    mode: str = "auto"
    min_delta: float = 1e-4
    cooldown: int = 0
    min_lr: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ReduceLROnPlateau":
        _check_mode(config["mode"], "reduce_lr_on_plateau")
        factor = float(config["factor"])
        if not 0.0 < factor < 1.0:
            raise UserError(f"reduce_lr_on_plateau.factor={factor:g} must be between 0 and 1 (the rate is "
                            "multiplied by it)")
        if int(config["patience"]) < 0 or int(config["cooldown"]) < 0 or float(config["min_lr"]) < 0:
            raise UserError("reduce_lr_on_plateau.patience, .cooldown and .min_lr must be 0 or more")
        return cls(monitor=config["monitor"], factor=factor, patience=int(config["patience"]), mode=config["mode"],
                   min_delta=float(config["min_delta"]), cooldown=int(config["cooldown"]),
                   min_lr=float(config["min_lr"]))

    @property
    def maximize(self) -> bool:
        return plateau_maximizes(self.monitor, self.mode)

    def improves(self, value: float, best: float) -> bool:
        if self.maximize:
            return bool(np.greater(value, best + self.min_delta))
        return bool(np.less(value, best - self.min_delta))


@dataclasses.dataclass(frozen=True)
class PlateauState:
    """`learning_rate`: the rate Keras's optimizer variable would hold (float32); `reduced`: lowered at the
    epoch just seen."""

    learning_rate: float
    wait: int = 0
    cooldown_counter: int = 0
    best: float | None = None  # None: ±inf
    reduced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PlateauState":
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})


def plateau_step(options: ReduceLROnPlateau, state: PlateauState, value: float) -> PlateauState:
    """Keras's on_epoch_end: the state after an epoch whose monitored value is `value`."""
    state = dataclasses.replace(state, reduced=False)
    if state.cooldown_counter > 0:
        state = dataclasses.replace(state, cooldown_counter=state.cooldown_counter - 1, wait=0)
    best = _from_json(state.best, options.maximize)
    if options.improves(value, best):
        return dataclasses.replace(state, best=_to_json(value), wait=0)
    if state.cooldown_counter > 0:
        return state
    state = dataclasses.replace(state, wait=state.wait + 1)
    if state.wait < options.patience:
        return state
    old = np.float32(state.learning_rate)
    if not old > np.float32(options.min_lr):
        return state
    new = max(old * options.factor, options.min_lr)  # float32 arithmetic, as Keras computes it
    return dataclasses.replace(state, learning_rate=float(np.float32(new)), cooldown_counter=options.cooldown,
                               wait=0, reduced=True)
