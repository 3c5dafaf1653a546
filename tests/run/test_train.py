"""The training engine end to end on real data (scikit-learn's digits): resume, interruption, files, errors."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from run_configs import tiny_config
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util.tensor_util import make_ndarray

from cnn_flax.errors import UserError
from cnn_flax.run import modes
from cnn_flax.run.train import Trainer, train_and_evaluate
from cnn_flax.training.hooks import StopRequest

HISTORY_KEYS = ("epoch", "learning_rate", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


def _history(workdir):
    with open(os.path.join(workdir, "history.json")) as handle:
        return [{k: r[k] for k in HISTORY_KEYS} for r in json.load(handle)]


def _params(workdir, epoch, **overrides):
    trainer = Trainer(tiny_config(**overrides))
    from cnn_flax.training.checkpoint import Checkpoints

    tree, meta = Checkpoints(os.path.join(workdir, "checkpoints")).restore_epoch(epoch, trainer.template())
    return tree["state"], meta


def _assert_same_state(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.batch_stats, b.batch_stats)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.opt_state, b.opt_state)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = train_and_evaluate(tiny_config(num_epochs=4), workdir)
    return workdir, result


def test_a_run_leaves_every_documented_file(uninterrupted):
    workdir, result = uninterrupted
    for name in ("config.json", "history.json", "training.png", "metrics.json", "report.txt",
                 "confusion_matrix.png", "predictions.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    events, = [name for name in os.listdir(workdir) if name.startswith("events.out.tfevents")]
    val_accuracy = {event.step: make_ndarray(value.tensor).item()  # as TensorBoard reads it
                    for event in EventFileLoader(os.path.join(workdir, events)).Load()
                    for value in event.summary.value if value.tag == "val_accuracy"}
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert val_accuracy == {4 * r["epoch"]: pytest.approx(r["val_accuracy"]) for r in history}  # steps_per_epoch=4
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
        "epoch_1", "epoch_2", "epoch_3", "epoch_4"]  # no interrupted/: nothing stopped it mid-epoch
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    assert metrics["split"] == "test" and metrics["num_examples"] == 64  # eval_steps=2 of 32
    assert 0.0 <= metrics["rank1"] <= metrics["rank5"] <= 1.0
    assert result.metrics["rank1"] == metrics["rank1"] and not result.interrupted and result.is_writer
    history = _history(workdir)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    report = open(os.path.join(workdir, "report.txt")).read()
    assert "precision" in report and "weighted avg" in report
    environment = json.load(open(os.path.join(workdir, "run_info.json")))["environment"]
    assert environment["devices"] == ["cpu (cpu:0)"] and environment["device count"] == 1  # num_devices=1


def test_two_epochs_then_four_equal_four_uninterrupted(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    workdir = str(tmp_path)
    train_and_evaluate(tiny_config(num_epochs=2), workdir)
    assert [r["epoch"] for r in _history(workdir)] == [1, 2]
    train_and_evaluate(tiny_config(num_epochs=4), workdir)
    assert _history(workdir) == _history(reference)
    _assert_same_state(_params(workdir, 4)[0], _params(reference, 4)[0])


def test_interrupted_mid_epoch_resumes_bit_exactly(uninterrupted, tmp_path, monkeypatch):
    reference, _ = uninterrupted
    workdir = str(tmp_path)
    calls = {"n": 0}

    def stop_after_six_steps(self):
        calls["n"] += 1
        return calls["n"] >= 6  # epoch 2, after its second batch

    monkeypatch.setattr(StopRequest, "agreed", stop_after_six_steps)
    result = train_and_evaluate(tiny_config(num_epochs=4), workdir)
    assert result.interrupted and result.metrics is None
    assert os.listdir(os.path.join(workdir, "checkpoints", "interrupted")) == ["step_6"]
    assert [r["epoch"] for r in _history(workdir)] == [1]
    monkeypatch.undo()
    train_and_evaluate(tiny_config(num_epochs=4), workdir)
    assert _history(workdir) == _history(reference)
    _assert_same_state(_params(workdir, 4)[0], _params(reference, 4)[0])
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "interrupted"))  # gone with its checkpoint


def test_evaluate_every_saved_epoch(uninterrupted, capsys):
    workdir, _ = uninterrupted
    result = modes.evaluate(tiny_config(num_epochs=4), workdir, "all")
    assert [row["epoch"] for row in result["epochs"]] == [1, 2, 3, 4]
    table = capsys.readouterr().out
    assert "rank-1" in table and "rank-5" in table
    assert os.path.exists(os.path.join(workdir, "checkpoints_evaluation.txt"))
    single = modes.evaluate(tiny_config(num_epochs=4), workdir, "2")
    assert single["rank1"] == pytest.approx(result["epochs"][1]["rank1"])
    with pytest.raises(UserError, match=r"--checkpoint=9: no such epoch in .* \(saved: 1, 2, 3, 4\)"):
        modes.evaluate(tiny_config(num_epochs=4), workdir, "9")


def test_resume_epoch_restarts_earlier_and_sets_later_checkpoints_aside(uninterrupted, tmp_path):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    train_and_evaluate(tiny_config(num_epochs=3, resume_epoch=2, **{"optimizer.learning_rate": 0.001}), workdir)
    history = _history(workdir)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[:2] == _history(uninterrupted[0])[:2]
    assert history[2]["learning_rate"] < _history(uninterrupted[0])[2]["learning_rate"]
    aside = [name for name in os.listdir(tmp_path / "run") if name.startswith("checkpoints.set-aside")]
    assert len(aside) == 1 and sorted(os.listdir(tmp_path / "run" / aside[0])) == ["epoch_3", "epoch_4"]


def test_workdir_of_another_model_is_refused(uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    with pytest.raises(UserError, match="holds checkpoints of model .*use another --workdir"):
        train_and_evaluate(tiny_config(num_epochs=5, **{"model.bn_order": "conv_bn_act"}), workdir)


def test_a_run_resumes_with_another_bn_momentum(uninterrupted, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(uninterrupted[0], workdir)
    result = train_and_evaluate(tiny_config(num_epochs=5, **{"model.bn_momentum": 0.9}), workdir)
    assert [r["epoch"] for r in _history(workdir)] == [1, 2, 3, 4, 5] and not result.interrupted


def test_another_optimizer_in_the_same_workdir_is_refused_and_keeps_every_checkpoint(uninterrupted, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(uninterrupted[0], workdir)
    with pytest.raises(UserError, match=r"checkpoints/epoch_4 holds another training state than this run builds "
                                        r"\(state/opt_state/.* is not in the checkpoint\).*--config.init_from="):
        train_and_evaluate(tiny_config(num_epochs=5, **{"optimizer.name": "adam"}), workdir)
    assert not [name for name in os.listdir(workdir) if name.startswith("checkpoints.")]  # nothing set aside
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
        "epoch_1", "epoch_2", "epoch_3", "epoch_4"]  # no interrupted/: nothing stopped it mid-epoch


def test_pmap_path_runs_the_whole_loop(tmp_path):
    # Step-level equality with jit is in test_training_parallel; pmap draws dropout and augmentation per
    # device, so whole runs differ in their random numbers. Here: the loop, checkpoint and report work.
    workdir = str(tmp_path)
    result = train_and_evaluate(tiny_config(num_epochs=2, parallel="pmap", num_devices=0), workdir)
    history = _history(workdir)
    assert [r["epoch"] for r in history] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in history)
    assert 0.0 <= result.metrics["rank1"] <= 1.0
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["epoch_1", "epoch_2"]


def test_non_finite_loss_stops_with_the_step(tmp_path):
    with pytest.raises(UserError, match=r"the loss became non-finite at step \d+; .*Lower the learning rate"):
        train_and_evaluate(tiny_config(num_epochs=2, **{"optimizer.learning_rate": 1e12}), str(tmp_path))


def test_batch_size_not_divisible_by_devices(tmp_path):
    with pytest.raises(UserError, match="batch_size=12 is not divisible by the 8 devices"):
        train_and_evaluate(tiny_config(batch_size=12, num_devices=0), str(tmp_path))


def test_on_device_data_and_half_precision_runs(uninterrupted, tmp_path):
    """data.on_device gives the very batches of the host path; bfloat16 compute keeps float32 weights."""
    workdir = str(tmp_path / "on_device")
    train_and_evaluate(tiny_config(num_epochs=4, **{"data.on_device": True}), workdir)
    assert _history(workdir) == _history(uninterrupted[0])
    workdir = str(tmp_path / "bf16")
    train_and_evaluate(tiny_config(num_epochs=1, half_precision=True), workdir)
    state, _ = _params(workdir, 1)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(state.params)} == {np.dtype(np.float32)}
    assert np.isfinite(_history(workdir)[0]["train_loss"])


def test_init_from_another_runs_checkpoint(uninterrupted, tmp_path):
    from cnn_flax.run.experiment import build_experiment, initial_variables

    reference, _ = _params(uninterrupted[0], 2)
    for source in (uninterrupted[0] + "/checkpoints/epoch_2", uninterrupted[0]):
        experiment = build_experiment(tiny_config(init_from=source))
        variables = initial_variables(experiment)
        expected = reference if source.endswith("epoch_2") else _params(uninterrupted[0], 4)[0]
        jax.tree_util.tree_map(np.testing.assert_array_equal, variables["params"], expected.params)
        jax.tree_util.tree_map(np.testing.assert_array_equal, variables["batch_stats"], expected.batch_stats)
    with pytest.raises(UserError, match="init_from='/nowhere' does not exist"):
        initial_variables(build_experiment(tiny_config(init_from="/nowhere")))
    other = build_experiment(tiny_config(init_from=uninterrupted[0], **{"data.image_size": 32}))
    with pytest.raises(UserError, match="fc1/kernel is missing or has another shape"):
        initial_variables(other)


# On all eight devices: the one whole run here whose batches, gradients and moving average are split over them.
MODERN = {"num_devices": 0, "ema_decay": 0.9, "optimizer.accum_steps": 2, "loss.label_smoothing": 0.1,
          "optimizer.name": "adamw", "optimizer.weight_decay": 0.01, "optimizer.learning_rate": 0.003,
          "schedule.name": "warmup_cosine", "schedule.warmup_epochs": 0.5, "optimizer.clip_global_norm": 5.0,
          "data.augment.mixup_alpha": 0.2, "data.augment.cutmix_alpha": 1.0}


def test_modern_switches_resume_bit_exactly_and_report_the_moving_average(tmp_path, monkeypatch, capsys):
    from cnn_flax.training.checkpoint import load_variables

    reference, workdir = str(tmp_path / "reference"), str(tmp_path / "resumed")
    result = train_and_evaluate(tiny_config(num_epochs=2, **MODERN), reference)
    calls = {"n": 0}

    def stop_after_six_steps(self):
        calls["n"] += 1
        return calls["n"] >= 6  # epoch 2, after its second batch

    monkeypatch.setattr(StopRequest, "agreed", stop_after_six_steps)
    assert train_and_evaluate(tiny_config(num_epochs=2, **MODERN), workdir).interrupted
    monkeypatch.undo()
    train_and_evaluate(tiny_config(num_epochs=2, **MODERN), workdir)
    records = [[{k: v for k, v in r.items() if k != "seconds"} for r in json.load(open(f"{w}/history.json"))]
               for w in (reference, workdir)]
    assert records[0] == records[1] and {"ema_val_loss", "ema_val_accuracy"} <= set(records[0][-1])
    (state, _), (resumed, _) = _params(reference, 2, **MODERN), _params(workdir, 2, **MODERN)
    _assert_same_state(state, resumed)
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.ema, resumed.ema)

    metrics = json.load(open(os.path.join(reference, "metrics.json")))
    assert result.metrics["ema_rank1"] == metrics["ema_rank1"] and set(metrics) >= {"ema_rank5", "ema_loss"}
    assert json.load(open(os.path.join(reference, "ema_metrics.json")))["rank1"] == metrics["ema_rank1"]
    averaged = modes.evaluate(tiny_config(num_epochs=2, ema_eval=True, **MODERN), reference)
    assert averaged["rank1"] == metrics["ema_rank1"] and "ema_rank1" not in averaged
    template = jax.eval_shape(lambda: state.variables)
    loaded = load_variables(reference, template, ema=True)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, state.ema)
    with pytest.raises(UserError, match="holds checkpoints with a moving average of the weights; keep ema_decay"):
        train_and_evaluate(tiny_config(num_epochs=3, **dict(MODERN, ema_decay=0.0)), reference)
    with pytest.raises(UserError, match="ema_eval .* needs the run's ema_decay"):
        modes.evaluate(tiny_config(num_epochs=2, ema_eval=True), reference)
    with pytest.raises(UserError, match="accum_steps=3: batch_size=32 must split"):
        train_and_evaluate(tiny_config(**{"optimizer.accum_steps": 3}), str(tmp_path / "bad"))


def test_the_train_step_donates_the_state_and_metrics_it_is_given():
    """A step writes its new state into the buffers of the one it was given, so a run holds one train
    state, not two: the arrays passed in are deleted and the step's result is a working state."""
    from cnn_flax.run.experiment import initial_variables
    from cnn_flax.training.metrics import TrainMetrics

    trainer = Trainer(tiny_config())
    parallel = trainer.parallel
    batch = parallel.put_batch(next(iter(trainer.batches("train", shuffle=True, epoch=0, drop_remainder=True))))
    state = parallel.put_replicated(trainer.new_state(initial_variables(trainer.experiment)))
    metrics = parallel.put_replicated(TrainMetrics.empty())
    given = jax.tree_util.tree_leaves((state, metrics))
    state, metrics = trainer.train_step(state, batch, metrics)
    jax.block_until_ready(metrics)
    assert given and all(leaf.is_deleted() for leaf in given)
    assert int(jax.device_get(state.step).reshape(-1)[0]) == 1  # the result is the advanced state
