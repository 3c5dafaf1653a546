"""Orbax checkpoints: one per saved epoch (`checkpoints/epoch_5`, like the deck's epoch_5.hdf5), plus one
mid-epoch checkpoint written when a run is interrupted (`checkpoints/interrupted/step_N`).

Orbax writes into a temporary folder and renames it only when complete, so a crash never leaves a
checkpoint that looks whole. A checkpoint that exists but cannot be read is reported and skipped in
favour of the previous good one; it is never used silently. Each checkpoint carries a small JSON
`meta` (epoch, position inside the epoch, step, model config) so that resuming can check that the
workdir belongs to the same model and knows exactly where in the data order to continue.
"""

import logging
import os
import shutil
import time
from typing import Any

import orbax.checkpoint as ocp
from flax import serialization

from cnn_flax.errors import UserError

log = logging.getLogger(__name__)


def _manager(directory: str, prefix: str, keep: int | None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, step_prefix=prefix, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "meta"))


class Checkpoints:
    """Epoch checkpoints and the interrupted-run checkpoint of one workdir."""

    def __init__(self, directory: str, keep: int | None = None) -> None:
        self.directory = directory
        self.epochs = _manager(directory, "epoch", keep or None)
        self.interrupted = _manager(os.path.join(directory, "interrupted"), "step", 1)

    def save_epoch(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        self._save(self.epochs, epoch, state, meta)

    def save_interrupted(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self._save(self.interrupted, step, state, meta)

    @staticmethod
    def _save(manager: ocp.CheckpointManager, number: int, state: Any, meta: dict[str, Any]) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(serialization.to_state_dict(state)),
                                  meta=ocp.args.JsonSave(meta))
        try:
            manager.save(number, args=args, force=True)
            manager.wait_until_finished()
        except OSError as error:
            raise UserError(f"could not write a checkpoint into {manager.directory} ({error.strerror or error}); "
                            "free disk space or choose another --workdir, then run the same command again") from error

    def saved_epochs(self) -> list[int]:
        return sorted(self.epochs.all_steps())

    def read_meta(self, manager: ocp.CheckpointManager, number: int) -> dict[str, Any]:
        return manager.restore(number, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, manager: ocp.CheckpointManager, number: int, template: Any) -> tuple[Any, dict[str, Any]]:
        target = serialization.to_state_dict(template)
        restored = manager.restore(number, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                    meta=ocp.args.JsonRestore()))
        return serialization.from_state_dict(template, restored["state"]), restored["meta"]

    def restore_epoch(self, epoch: int, template: Any) -> tuple[Any, dict[str, Any]]:
        if epoch not in self.saved_epochs():
            raise UserError(f"no checkpoint for epoch {epoch} in {self.directory}; saved epochs: "
                            f"{', '.join(map(str, self.saved_epochs())) or 'none'}")
        return self.restore(self.epochs, epoch, template)

    def restore_latest(self, template: Any, max_epoch: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """The newest readable checkpoint by training step (epoch or interrupted), or None if there is none.

        `max_epoch` ignores checkpoints beyond that epoch (resuming from an earlier epoch on purpose).
        """
        candidates = [(self.epochs, n) for n in self.epochs.all_steps()]
        candidates += [(self.interrupted, n) for n in self.interrupted.all_steps()]
        ordered = []
        for manager, number in candidates:
            try:
                meta = self.read_meta(manager, number)
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is reported and skipped
                log.warning("Skipping unreadable checkpoint %s: %s", self._name(manager, number), error)
                continue
            if max_epoch is not None and (meta["epoch"], meta["batch"]) > (max_epoch, 0):
                continue
            ordered.append((meta["step"], manager, number))
        for _, manager, number in sorted(ordered, key=lambda item: item[0], reverse=True):
            try:
                state, meta = self.restore(manager, number, template)
            except Exception as error:  # noqa: BLE001
                log.warning("Checkpoint %s is corrupt (%s); falling back to the previous one",
                            self._name(manager, number), str(error).splitlines()[0][:200])
                continue
            return state, meta
        return None

    def _name(self, manager: ocp.CheckpointManager, number: int) -> str:
        prefix = "epoch" if manager is self.epochs else "interrupted/step"
        return os.path.join(self.directory, f"{prefix}_{number}")

    def set_aside_after(self, epoch: int) -> list[str]:
        """Move checkpoints past `epoch` (and any interrupted one) into a dated folder, to restart from `epoch`.

        This is the deck's "stop, lower the rate, resume" workflow; nothing is deleted.
        """
        later = [n for n in self.epochs.all_steps() if n > epoch]
        interrupted = list(self.interrupted.all_steps())
        if not later and not interrupted:
            return []
        target = f"{self.directory}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}"
        os.makedirs(target, exist_ok=True)
        moved = []
        for number in later:
            moved.append(shutil.move(os.path.join(self.directory, f"epoch_{number}"), target))
        for number in interrupted:
            moved.append(shutil.move(os.path.join(self.directory, "interrupted", f"step_{number}"), target))
        self.epochs.reload()
        self.interrupted.reload()
        return moved

    def clear_interrupted(self) -> None:
        for number in self.interrupted.all_steps():
            self.interrupted.delete(number)

    def close(self) -> None:
        self.epochs.close()
        self.interrupted.close()
