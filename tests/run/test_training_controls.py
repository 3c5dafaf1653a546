"""Early stopping, lower-on-plateau and the best checkpoint in real runs on digits: the run's own history,
fed to tf_keras's callbacks, gives the same rates and stop epoch. (A run with these controls killed at random
moments resumes to the uninterrupted history: tests/run/test_soak.py.)"""

import json
import os

import numpy as np
import pytest
from run_configs import tiny_config, with_overrides

from cnn_flax.errors import UserError
from cnn_flax.run import modes
from cnn_flax.run.load import best_epoch, load_run
from cnn_flax.run.train import Trainer, fit, train_and_evaluate
from cnn_flax.training.checkpoint import Checkpoints
from cnn_flax.training.progress import Reporter
from cnn_flax.training.workdir import RunFiles

# Early stopping with a min_delta no epoch beats after the first (val_loss starts near 2.8): it ends the run after
# epoch 4 and puts back epoch 1's weights. The plateau's min_delta leaves its decisions to the curve.
CONTROLS = {"early_stopping.enabled": True, "early_stopping.patience": 3, "early_stopping.min_delta": 5.0,
            "early_stopping.restore_best_weights": True,
            "reduce_lr_on_plateau.enabled": True, "reduce_lr_on_plateau.patience": 1,
            "reduce_lr_on_plateau.min_delta": 0.5, "reduce_lr_on_plateau.factor": 0.5,
            "reduce_lr_on_plateau.cooldown": 1}


def _history(workdir):
    with open(os.path.join(workdir, "history.json")) as handle:
        return json.load(handle)


def _keras_replay(records, rate):
    """tf_keras's EarlyStopping and ReduceLROnPlateau driven by the run's own val_loss sequence."""
    callbacks = pytest.importorskip("tf_keras.callbacks")
    tf = pytest.importorskip("tensorflow")

    class Model:
        stop_training = False

        class optimizer:  # noqa: N801 - the attribute Keras reads
            lr = tf.Variable(rate, dtype=tf.float32)

        def get_weights(self):
            return [np.asarray(self.epoch)]

        def set_weights(self, weights):
            self.restored = int(weights[0])

    model = Model()
    stop = callbacks.EarlyStopping(monitor="val_loss", patience=3, min_delta=5.0, restore_best_weights=True)
    plateau = callbacks.ReduceLROnPlateau(monitor="val_loss", patience=1, min_delta=0.5, factor=0.5, cooldown=1)
    rates = []
    for callback in (stop, plateau):
        callback.set_model(model)
        callback.on_train_begin()
    for index, record in enumerate(records):
        rates.append(float(model.optimizer.lr.numpy()))
        model.epoch = record["epoch"]
        for callback in (stop, plateau):
            callback.on_epoch_end(index, {"val_loss": record["val_loss"]})
        if model.stop_training:
            break
    stop.on_train_end()
    return rates, stop.stopped_epoch + 1, model.restored


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("controlled"))
    # A rate of 0.02 overshoots after epoch 1 (val_loss 2.6, then 18 and 10 here): epoch 1 stays the best.
    config = tiny_config(num_epochs=8, **CONTROLS, **{
        "optimizer.learning_rate": 0.02, "schedule.name": "constant", "checkpoint.keep_best": 1,
        "keep_checkpoints": 2})
    trainer = Trainer(config)
    reporter = Reporter(workdir, None, {})
    try:
        loop = fit(trainer, RunFiles(workdir), reporter)
    finally:
        reporter.close()
    return workdir, config, trainer, loop


def test_the_run_decides_as_keras_callbacks_fed_its_history(controlled):
    workdir, _, trainer, loop = controlled
    records = _history(workdir)
    rates, stopped, restored = _keras_replay(records, 0.02)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] and stopped == 4 and restored == 1
    assert loop.stop and loop.early_stopped
    assert [r["learning_rate"] for r in records] == pytest.approx(rates, rel=1e-6)  # the rate each epoch trained at
    reduced = [r.get("lr_reduced_to") for r in records]
    assert reduced[:3] == [float(f"{rates[i + 1]:.7g}") if rates[i + 1] < rates[i] else None for i in range(3)]
    assert any(reduced[:3])
    assert records[-1]["stopped_early"] is True and records[-1]["restored_epoch"] == 1
    assert trainer.compile_count("train") == 1  # the rate changed inside the compiled step


def test_best_weights_and_best_checkpoint(controlled):
    workdir, config, _, loop = controlled
    records = _history(workdir)
    assert records[0]["val_loss"] < min(records[1]["val_loss"], records[2]["val_loss"])  # epoch 1 is the best
    # The final checkpoint holds epoch 1's weights (put back by early stopping) and is ranked by their metrics,
    # not by what epoch 4's own weights scored: it ties with epoch 1 for the best val_loss and, being newer, is
    # the one keep_best=1 keeps (with the 2 newest).
    checkpoints = Checkpoints(RunFiles(workdir).checkpoints)
    try:
        saved = checkpoints.saved_metrics()
    finally:
        checkpoints.close()
    assert saved[4]["val_loss"] == records[0]["val_loss"] != records[-1]["val_loss"]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["epoch_3", "epoch_4"]
    assert load_run(workdir, "best").epoch == 4 and load_run(workdir).epoch == 4
    on_val = with_overrides(config.copy_and_resolve_references(), {"eval_split": "val"})
    best = modes.evaluate(on_val, workdir, "best")
    assert best["loss"] == pytest.approx(records[0]["val_loss"], rel=1e-5)
    assert modes.evaluate(on_val, workdir, "latest")["loss"] == pytest.approx(best["loss"], rel=1e-6)
    precise = modes.evaluate(with_overrides(on_val.copy_and_resolve_references(), {"precise_bn_batches": 2}),
                             workdir, "best")  # the same weights with BatchNorm statistics from 2 training batches
    assert precise["loss"] != pytest.approx(best["loss"], rel=1e-3)
    with pytest.raises(UserError, match="--checkpoint=2: no such epoch .*saved: 3, 4"):
        load_run(workdir, "2")
    by = lambda monitor: with_overrides(config.copy_and_resolve_references(), {"checkpoint.monitor": monitor})  # noqa: E731
    with pytest.raises(UserError, match="--checkpoint=best: neither the checkpoints nor history.json .* val_top5"):
        best_epoch(workdir, [3, 4], by("val_top5"))
    assert best_epoch(workdir, [3, 4], by("val_accuracy")) == (3 if records[2]["val_accuracy"] >
                                                               records[0]["val_accuracy"] else 4)


def test_an_early_stopped_run_stays_finished_and_another_setup_is_refused(controlled, tmp_path):
    workdir, config, _, _ = controlled
    result = train_and_evaluate(config, workdir)  # the same command again: nothing left to train
    assert not result.interrupted and [r["epoch"] for r in _history(workdir)] == [1, 2, 3, 4]
    plain = tiny_config(num_epochs=8)
    with pytest.raises(UserError, match="without reduce_lr_on_plateau.enabled|with reduce_lr_on_plateau.enabled"):
        train_and_evaluate(plain, workdir)
    with pytest.raises(UserError, match="early_stopping.monitor='val_top5' is not in the epoch's history"):
        train_and_evaluate(tiny_config(num_epochs=1, **{"early_stopping.enabled": True,
                                                        "early_stopping.monitor": "val_top5"}), str(tmp_path))
