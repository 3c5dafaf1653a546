"""checkpoint.keep_best: Orbax's preservation policies keep the best epochs beside the newest, across reopening."""

import os

import numpy as np

from cnn_flax.training.checkpoint import Checkpoints, KeepBest, best_epoch

VAL_LOSS = {1: 0.9, 2: 0.3, 3: 0.5, 4: float("nan"), 5: 0.4, 6: 0.8, 7: 0.7}


def _save(checkpoints, epoch):
    tree = {"w": np.full((2,), epoch, np.float32)}
    checkpoints.save_epoch(epoch, tree, dict(epoch=epoch, batch=0, step=epoch,
                                             metrics=dict(val_loss=VAL_LOSS[epoch], val_accuracy=epoch / 10)))


def _kept(directory):
    return sorted(int(name.split("_")[1]) for name in os.listdir(directory) if name.startswith("epoch_"))


def test_the_best_epochs_stay_beside_the_newest_after_reopening(tmp_path):
    directory = str(tmp_path / "run" / "checkpoints")
    policy = KeepBest("val_loss", maximize=False, count=2)
    checkpoints = Checkpoints(directory, keep=2, best=policy)
    for epoch in (1, 2, 3, 4):
        _save(checkpoints, epoch)
    checkpoints.close()
    assert _kept(directory) == [2, 3, 4]  # 4 (nan) is among the newest only; 2 and 3 are the best
    checkpoints = Checkpoints(directory, keep=2, best=policy)  # a resumed run: Orbax reads the stored metrics back
    for epoch in (5, 6, 7):
        _save(checkpoints, epoch)
    assert _kept(directory) == [2, 5, 6, 7]
    saved = checkpoints.saved_metrics()  # what --checkpoint=best ranks (cnn_flax.run.load.best_epoch)
    checkpoints.close()
    assert sorted(saved) == [2, 5, 6, 7] and saved[5] == {"val_loss": 0.4, "val_accuracy": 0.5}
    assert best_epoch(saved, "val_loss", maximize=False) == 2
    assert best_epoch(saved, "val_accuracy", maximize=True) == 7


def test_without_keep_best_only_the_newest_stay_and_ranking_is_keras_like():
    assert best_epoch({1: {"val_loss": 0.5}, 2: {"val_loss": 0.5}, 3: {"val_loss": 0.6}}, "val_loss", False) == 1
    assert best_epoch({1: {"val_loss": float("nan")}, 2: None}, "val_loss", False) is None
    assert best_epoch({1: {"val_accuracy": 0.5}, 2: {"val_accuracy": 0.7}}, "val_accuracy", True) == 2


def test_keep_without_best(tmp_path):
    directory = str(tmp_path / "checkpoints")
    checkpoints = Checkpoints(directory, keep=2)
    for epoch in (1, 2, 3):
        _save(checkpoints, epoch)
    checkpoints.close()
    assert _kept(directory) == [2, 3]
