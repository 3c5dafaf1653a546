"""EarlyStopping and ReduceLROnPlateau against tf_keras's own callbacks fed the same metric sequences."""

import dataclasses

import numpy as np
import pytest

from cnn_flax.errors import UserError
from cnn_flax.training.controls import (
    EarlyStopping,
    EarlyStoppingState,
    PlateauState,
    ReduceLROnPlateau,
    early_stopping_step,
    monitored,
    plateau_step,
)

keras_callbacks = pytest.importorskip("tf_keras.callbacks")
tf = pytest.importorskip("tensorflow")


class _Optimizer:
    def __init__(self, rate: float) -> None:
        self.lr = tf.Variable(rate, dtype=tf.float32)
        self.learning_rate = self.lr


class _Model:
    """What the two callbacks touch: stop_training, the optimizer's rate, and weights (here: an epoch tag)."""

    def __init__(self, rate: float = 0.1) -> None:
        self.stop_training = False
        self.optimizer = _Optimizer(rate)
        self.epoch = 0
        self.restored = None

    def get_weights(self):
        return [np.asarray(self.epoch)]

    def set_weights(self, weights):
        self.restored = int(weights[0])


def _keras_early_stopping(options: EarlyStopping, values):
    callback = keras_callbacks.EarlyStopping(
        monitor=options.monitor, min_delta=options.min_delta, patience=options.patience, mode=options.mode,
        baseline=options.baseline, restore_best_weights=options.restore_best_weights,
        start_from_epoch=options.start_from_epoch)
    model = _Model()
    callback.set_model(model)
    callback.on_train_begin()
    for index, value in enumerate(values):
        model.epoch = index + 1  # the weights at the end of 1-based epoch index + 1
        callback.on_epoch_end(index, {options.monitor: value})
        if model.stop_training:
            break
    callback.on_train_end()
    return (callback.stopped_epoch + 1 if callback.stopped_epoch else 0), model.restored


def _ours_early_stopping(options: EarlyStopping, values):
    state = EarlyStoppingState()
    for epoch, value in enumerate(values, start=1):
        state = early_stopping_step(options, state, epoch, value)
        if state.stopped_epoch:
            break
    return state.stopped_epoch, state.snapshot_epoch or None


def _keras_plateau(options: ReduceLROnPlateau, values, rate: float):
    callback = keras_callbacks.ReduceLROnPlateau(
        monitor=options.monitor, factor=options.factor, patience=options.patience, mode=options.mode,
        min_delta=options.min_delta, cooldown=options.cooldown, min_lr=options.min_lr)
    model = _Model(rate)
    callback.set_model(model)
    callback.on_train_begin()
    rates = []
    for index, value in enumerate(values):
        callback.on_epoch_end(index, {options.monitor: value})
        rates.append(float(model.optimizer.lr.numpy()))
    return rates


def _ours_plateau(options: ReduceLROnPlateau, values, rate: float):
    state, rates = PlateauState(learning_rate=float(np.float32(rate))), []
    for value in values:
        state = plateau_step(options, state, value)
        rates.append(state.learning_rate)
    return rates


def _sequence(rng, length):
    """Noisy curves with plateaus, repeats and exact ties: the cases min_delta and patience decide."""
    kind = rng.integers(4)
    if kind == 0:
        values = 1.0 / (1.0 + np.arange(length)) + rng.normal(0, 0.05, length)
    elif kind == 1:
        values = rng.choice([0.5, 0.4, 0.45, 0.4], length)
    elif kind == 2:
        values = np.round(rng.uniform(0, 1, length), 1)
    else:
        values = np.cumsum(rng.normal(0, 0.01, length)) + 0.5
    return [float(v) for v in values]


@pytest.mark.parametrize("seed", range(4))
def test_early_stopping_stops_and_restores_as_keras_does(seed):
    rng = np.random.default_rng(seed)
    outcomes = []
    for _ in range(150):
        monitor = str(rng.choice(["val_loss", "val_accuracy", "train_loss"]))
        options = EarlyStopping(
            monitor=monitor, min_delta=float(rng.choice([0.0, 0.01, -0.02, 0.1])), patience=int(rng.integers(0, 5)),
            mode=str(rng.choice(["auto", "min", "max"])),
            baseline=None if rng.random() < 0.5 else float(rng.choice([0.3, 0.45, 0.9])),
            restore_best_weights=bool(rng.random() < 0.5), start_from_epoch=int(rng.choice([0, 0, 2, 5])))
        values = _sequence(rng, int(rng.integers(1, 25)))
        outcomes.append(_ours_early_stopping(options, values))
        assert outcomes[-1] == _keras_early_stopping(options, values), (options, values)
    assert sum(1 for stop, _ in outcomes if stop) > 30 and sum(1 for _, kept in outcomes if kept) > 30


@pytest.mark.parametrize("seed", range(4))
def test_plateau_lowers_the_rate_at_the_same_epochs_to_the_same_values_as_keras(seed):
    rng = np.random.default_rng(100 + seed)
    reduced = 0
    for _ in range(150):
        monitor = str(rng.choice(["val_loss", "val_accuracy", "train_loss"]))
        options = ReduceLROnPlateau(
            monitor=monitor, factor=float(rng.choice([0.1, 0.5, 0.2, 0.3333])), patience=int(rng.integers(0, 5)),
            mode=str(rng.choice(["auto", "min", "max"])), min_delta=float(rng.choice([0.0, 1e-4, 0.01, 0.1])),
            cooldown=int(rng.integers(0, 4)), min_lr=float(rng.choice([0.0, 1e-4, 0.003, 0.05])))
        rate = float(rng.choice([0.1, 0.01, 0.002, 0.0005]))
        values = _sequence(rng, int(rng.integers(1, 30)))
        rates = _ours_plateau(options, values, rate)
        assert rates == _keras_plateau(options, values, rate), (options, values)
        reduced += rates[-1] < np.float32(rate)
    assert reduced > 30


def test_edge_cases_match_keras():
    # patience 0 stops at the second epoch at the earliest; a constant curve never improves after its first value.
    for options, values in [(EarlyStopping(patience=0), [1.0, 1.0, 1.0]),
                            (EarlyStopping(patience=0), [1.0]),
                            (EarlyStopping(patience=2, baseline=0.5), [0.9, 0.8, 0.7, 0.4, 0.6]),
                            (EarlyStopping(patience=1, restore_best_weights=True), [0.5, 0.6, 0.7, 0.1]),
                            (EarlyStopping(patience=1, restore_best_weights=True, start_from_epoch=3),
                             [0.5, 0.4, 0.3, 0.6, 0.7]),
                            (EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.05), [0.5, 0.52, 0.53]),
                            (EarlyStopping(patience=3), [float("nan"), 0.2, float("nan"), 0.3, 0.3])]:
        assert _ours_early_stopping(options, values) == _keras_early_stopping(options, values), (options, values)
    assert _ours_early_stopping(EarlyStopping(patience=0), [1.0, 1.0]) == (2, None)
    for options, values, rate in [(ReduceLROnPlateau(patience=0, min_lr=0.01), [1.0] * 6, 0.1),
                                  (ReduceLROnPlateau(patience=1, min_lr=0.01, factor=0.5), [1.0] * 12, 0.1),
                                  (ReduceLROnPlateau(patience=1, cooldown=2), [1.0] * 10, 0.1),
                                  (ReduceLROnPlateau(monitor="val_accuracy", patience=1), [0.5, 0.5, 0.6, 0.6], 1.0),
                                  (ReduceLROnPlateau(patience=2), [float("nan"), 1.0, 1.0, 1.0, 1.0], 0.01)]:
        assert _ours_plateau(options, values, rate) == _keras_plateau(options, values, rate), (options, values)
    assert _ours_plateau(ReduceLROnPlateau(patience=0, min_lr=0.01), [1.0] * 4, 0.1) == pytest.approx(
        [0.1, 0.01, 0.01, 0.01])


def test_state_survives_a_json_round_trip_and_bad_settings_are_named():
    state = early_stopping_step(EarlyStopping(patience=3), EarlyStoppingState(), 1, 0.7)
    assert EarlyStoppingState.from_dict(state.to_dict()) == state and state.best == 0.7
    assert EarlyStoppingState().to_dict()["best"] is None  # infinity is not JSON
    plateau = PlateauState(learning_rate=0.1)
    assert PlateauState.from_dict(dataclasses.replace(plateau, wait=2).to_dict()).wait == 2
    with pytest.raises(UserError, match="reduce_lr_on_plateau.factor=1 must be between 0 and 1"):
        ReduceLROnPlateau.from_config(dict(monitor="val_loss", factor=1.0, patience=1, mode="auto", min_delta=0,
                                           cooldown=0, min_lr=0))
    with pytest.raises(UserError, match="early_stopping.mode='lowest' is not known"):
        EarlyStopping.from_config(dict(monitor="val_loss", min_delta=0, patience=1, mode="lowest", baseline=None,
                                       restore_best_weights=False, start_from_epoch=0))
    with pytest.raises(UserError, match="early_stopping.monitor='val_acc' is not in .*val_accuracy"):
        monitored({"epoch": 1, "val_loss": 0.5, "val_accuracy": 0.8}, "val_acc", "early_stopping")
