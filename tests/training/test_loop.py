"""The pieces of a run on their own: hooks see every step and epoch and may stop the loop; evaluation
works from variables alone, without an optimizer; the benchmark times the loop without patching it."""

import os

import numpy as np
import pytest
from run_configs import tiny_config

from cnn_flax.bench.model import benchmark_figures
from cnn_flax.errors import UserError
from cnn_flax.evaluation import rank_accuracies
from cnn_flax.run import modes
from cnn_flax.run.evaluator import Evaluator
from cnn_flax.run.experiment import initial_variables
from cnn_flax.run.train import Trainer, fit
from cnn_flax.training.loop import Hook
from cnn_flax.training.progress import Reporter
from cnn_flax.training.workdir import RunFiles


class Recorder(Hook):
    """Writes down every call; optionally stops the run after a given step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.events, self.stop_at = [], stop_at

    def on_epoch_start(self, loop):
        self.events.append(("start", loop.epoch, loop.batch))

    def on_step(self, loop):
        self.events.append(("step", loop.step, loop.shown is not None))
        loop.stop = loop.step == self.stop_at

    def on_steps_done(self, loop):
        self.events.append(("steps_done", loop.epoch, round(loop.train["loss"], 6)))

    def on_epoch_end(self, loop):
        self.events.append(("end", loop.record["epoch"], round(loop.record["train_loss"], 6)))

    def on_stop(self, loop):
        self.events.append(("stop", loop.step, loop.mid_epoch))


@pytest.fixture(scope="module")
def trainer():
    return Trainer(tiny_config(num_epochs=2, steps_per_epoch=3))  # log_every_steps=2


def _fit(trainer, workdir, hook):
    reporter = Reporter(workdir, None, {})
    try:
        return fit(trainer, RunFiles(workdir), reporter, hooks=[hook])
    finally:
        reporter.close()


def test_a_hook_sees_every_epoch_and_step_then_the_resumed_run(trainer, tmp_path):
    workdir = str(tmp_path)
    stopper = Recorder(stop_at=4)  # epoch 2, after its first batch
    loop = _fit(trainer, workdir, stopper)
    assert loop.stop and loop.step == 4
    epoch_1 = stopper.events[4][2]
    assert stopper.events == [("start", 1, 0), ("step", 1, False), ("step", 2, True), ("step", 3, False),
                              ("steps_done", 1, epoch_1), ("end", 1, epoch_1),
                              ("start", 2, 0), ("step", 4, False), ("stop", 4, True)]
    assert os.listdir(os.path.join(workdir, "checkpoints", "interrupted")) == ["step_4"]

    resumed = Recorder()
    loop = _fit(trainer, workdir, resumed)  # the same run continues inside epoch 2
    assert not loop.stop and loop.step == 6
    assert [e[:2] for e in resumed.events] == [("start", 2), ("step", 5), ("step", 6), ("steps_done", 2),
                                               ("end", 2)]
    assert resumed.events[0] == ("start", 2, 1)  # batch 1 of epoch 2 was done before the stop
    assert resumed.events[-1][2] == resumed.events[-2][2]  # the record carries the epoch's train metrics
    assert trainer.compile_count("train") == 1 and trainer.compile_count("eval") == 1


def test_evaluation_needs_no_optimizer(monkeypatch, tmp_path):
    import cnn_flax.run.experiment
    import cnn_flax.run.train

    def no_optimizer(*args, **kwargs):
        raise AssertionError("evaluation built an optimizer")

    monkeypatch.setattr(cnn_flax.run.experiment, "make_optimizer", no_optimizer)
    monkeypatch.setattr(cnn_flax.run.train, "make_optimizer", no_optimizer)
    config = tiny_config()
    evaluator = Evaluator.from_config(config)
    experiment = evaluator.engine.experiment
    variables = initial_variables(experiment)
    scores = evaluator.scores(evaluator.on_devices(variables), "test")

    # The same figures computed independently: the model applied to the source's first eval_steps batches.
    logits, labels = [], []
    batches = experiment.source.batches("test", config.batch_size, shuffle=False, seed=0, epoch=0, drop_remainder=False)
    for _, batch in zip(range(config.eval_steps), batches, strict=False):
        images = evaluator.engine.preprocess(batch["image"], None)
        logits.append(np.asarray(experiment.model.apply(variables, images, train=False))[batch["mask"].astype(bool)])
        labels.append(batch["label"][batch["mask"].astype(bool)])
    expected = rank_accuracies(np.concatenate(logits), np.concatenate(labels))
    assert len(np.concatenate(labels)) == 64
    assert scores["rank1"] == pytest.approx(expected["rank1"]) and scores["rank5"] == pytest.approx(expected["rank5"])

    with pytest.raises(UserError, match="no checkpoint in .* and no init_from"):
        modes.evaluate(config, str(tmp_path))


def test_benchmark_registers_a_hook_and_patches_nothing(monkeypatch):
    from cnn_flax.run import engine, evaluator, train
    from cnn_flax.training import hooks, loop
    from cnn_flax.training import progress as reporting

    modules = (engine, evaluator, hooks, loop, train, reporting)
    before = {m.__name__: dict(vars(m)) for m in modules}
    classes = (train.Trainer, engine.Engine, evaluator.Evaluator, reporting.Reporter)
    class_attributes = {c: dict(vars(c)) for c in classes}
    made = []
    for cls in (train.Trainer, reporting.Reporter):
        original = cls.__init__

        def remember(self, *args, _original=original, **kwargs):
            _original(self, *args, **kwargs)
            made.append(self)
        monkeypatch.setattr(cls, "__init__", remember)
    # The eval phase in this process too (by default it has one of its own), so that its step is counted here.
    figures = benchmark_figures(tiny_config(), seconds=0.2, input_seconds=0.1, eval_apart=False)
    monkeypatch.undo()

    assert figures["compiles"] == 1
    assert {type(obj) for obj in made} == {train.Trainer, reporting.Reporter}
    for obj in made:  # no method replaced on an instance
        shadowed = [name for name in vars(obj) if hasattr(type(obj), name)]
        assert shadowed == [], (type(obj).__name__, shadowed)
    assert {m.__name__: dict(vars(m)) for m in modules} == before
    assert {c: dict(vars(c)) for c in classes} == class_attributes
    trainer = next(obj for obj in made if isinstance(obj, train.Trainer))
    assert trainer.compile_count("train") == 1 and trainer.compile_count("predict") == 1


def test_the_curves_are_redrawn_at_most_every_few_seconds_and_always_at_the_end(tmp_path, monkeypatch):
    """training.png: drawn at the first epoch's end, then only once `plot_seconds` have passed, at the last
    epoch, and when a hook stops the run with epochs not yet drawn; history.json every epoch."""
    import json

    from cnn_flax.training import hooks
    from cnn_flax.training.history import History
    from cnn_flax.training.loop import LoopState

    clock, drawn = [100.0], []
    monkeypatch.setattr(hooks.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(hooks, "plot_history", lambda records, path: drawn.append(records[-1]["epoch"]))
    history = History(str(tmp_path / "history.json"))
    writer = hooks.WriteHistory(history, RunFiles(str(tmp_path)), plot_seconds=10.0)
    loop = LoopState(epoch=1, batch=0, num_epochs=7, steps_per_epoch=1, state=None, metrics=None)
    record = dict(learning_rate=0.1, train_loss=1.0, train_accuracy=0.5, val_loss=1.0, val_accuracy=0.5,
                  seconds=4.0)

    def end(epoch, seconds_later, stop=False):
        clock[0] += seconds_later
        loop.epoch, loop.record, loop.stop = epoch, dict(record, epoch=epoch), stop
        writer.on_epoch_end(loop)
        assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == list(range(1, epoch + 1))

    for epoch in (1, 2, 3, 4):
        end(epoch, 4.0)
    assert drawn == [1, 4]  # 12 s after the first drawing
    end(5, 4.0)
    writer.on_stop(loop)  # e.g. SIGTERM mid-epoch 6: epoch 5 is not drawn yet
    assert drawn == [1, 4, 5]
    writer.on_stop(loop)  # nothing new
    end(6, 1.0, stop=True)  # early stopping
    end(7, 1.0)  # the last epoch
    assert drawn == [1, 4, 5, 6, 7]
