"""Orbax checkpoints: one per saved epoch (`checkpoints/epoch_5`, like the deck's epoch_5.hdf5), plus one
mid-epoch checkpoint written when a run is interrupted (`checkpoints/interrupted/step_N`).

Orbax writes into a temporary folder and renames it only when complete, so a crash never leaves a
checkpoint that looks whole. A checkpoint that exists but cannot be read is reported and skipped in
favour of the previous good one; it is never used silently. Each checkpoint carries a small JSON
`meta` (epoch, position inside the epoch, step, model config) so that resuming can check that the
workdir belongs to the same model and knows exactly where in the data order to continue; an epoch's meta
also holds that epoch's history record (`metrics`), which `--checkpoint=best` ranks.

Which epochs are kept is Orbax's preservation policy: the newest `keep` (LatestN) and, with `KeepBest`, the
best K by a monitored history key (BestN, over the metrics Orbax stores beside each checkpoint); an epoch
either policy keeps survives (AnyPreservationPolicy), as Keras's save_best_only and timm's model_best do.
"""

import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from cnn_flax.errors import UserError

log = logging.getLogger(__name__)


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


@dataclasses.dataclass(frozen=True)
class KeepBest:
    """Keep the `count` best epochs by the history key `monitor` (greater is better with `maximize`)."""

    monitor: str
    maximize: bool
    count: int

    def rank(self, metrics: Any) -> float:
        """The sort key of a checkpoint's metrics, greater better; a missing or non-finite value ranks last."""
        value = (metrics or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return -math.inf
        return float(value) if self.maximize else -float(value)


def best_epoch(metrics_by_epoch: dict[int, dict[str, Any] | None], monitor: str, maximize: bool) -> int | None:
    """The epoch whose metrics rank best by `monitor` (the earliest on a tie, as Keras keeps the first best);
    None when no epoch has a finite value of it."""
    policy = KeepBest(monitor, maximize, 1)
    ranked = [(policy.rank(metrics), -epoch) for epoch, metrics in metrics_by_epoch.items()]
    if not ranked or max(ranked)[0] == -math.inf:
        return None
    return -max(ranked)[1]


def _manager(directory: str, prefix: str, keep: int | None, best: KeepBest | None = None) -> ocp.CheckpointManager:
    # cleanup_tmp_directories: a save killed half-way leaves a temporary folder as big as a checkpoint;
    # it is never taken for one, and the next run removes it instead of letting it fill the disk.
    policy: dict[str, Any] = dict(max_to_keep=keep)
    if best is not None and best.count and keep:
        # best_fn makes Orbax store each save's metrics; the policy then keeps the newest and the best.
        policy = dict(best_fn=best.rank, best_mode="max", preservation_policy=preservation.AnyPreservationPolicy([
            preservation.LatestN(n=keep),
            preservation.BestN(get_metric_fn=best.rank, reverse=False, n=best.count,
                               keep_checkpoints_without_metrics=False)]))
    options = ocp.CheckpointManagerOptions(**policy, step_prefix=prefix, create=True,
                                           enable_async_checkpointing=False, cleanup_tmp_directories=True)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


def _storage_problem(error: Exception) -> str | None:
    """What the file system refused, for errors of the disk rather than of the program (else None).

    Python's own writes raise OSError; TensorStore, which writes the arrays, raises ValueError with the
    operating system's reason in its text ("RESOURCE_EXHAUSTED: ... No space left on device").
    """
    if isinstance(error, OSError):
        return error.strerror or str(error)
    text = str(error)
    for reason in ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied"):
        if reason in text:
            return reason
    return None


class _HeldBack(logging.Filter):
    """Holds back the error records logged (on absl's logger) while a save runs.

    Orbax logs an exception of its writer threads with a full traceback and then raises the same exception
    in the thread that waits for the save, where it becomes the run's one-line error; the log would only
    repeat it. Records of any other exception are logged after the save as usual.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.exc_info:
            self.records.append(record)
            return False
        return True


def _chain(error: BaseException | None) -> list[BaseException]:
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


@contextlib.contextmanager
def _raised_not_logged() -> Iterator[None]:
    logger, held = logging.getLogger("absl"), _HeldBack()
    logger.addFilter(held)
    raised: BaseException | None = None
    try:
        yield
    except BaseException as error:
        raised = error
        raise
    finally:
        logger.removeFilter(held)
        for record in held.records:
            if record.exc_info[1] not in _chain(raised):
                logger.handle(record)


class _OrbaxErrors(logging.Filter):
    """Drops the error records Orbax's own modules log (used once a save has failed and been reported)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


_ORBAX_THREADS_AFTER_FAILURE = _OrbaxErrors()


def write_checkpoint(manager: ocp.CheckpointManager, number: int, args: ocp.args.Composite,
                     metrics: dict[str, float] | None = None) -> None:
    """Writes one checkpoint completely: the one place where checkpoint bytes go to disk (tests fail it here)."""
    manager.save(number, args=args, force=True, metrics=metrics)
    manager.wait_until_finished()


def _first_difference(stored: Any, target: Any) -> str | None:
    """The first array path where a checkpoint's tree (Orbax's metadata: shapes, read without the arrays)
    and the tree a run would restore into differ, in words; None when they fit."""
    def by_path(tree: Any) -> dict[str, tuple[int, ...]]:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(path, simple=True, separator="/"):
                tuple(leaf.shape if hasattr(leaf, "shape") else np.shape(leaf)) for path, leaf in leaves}

    there, here = by_path(stored), by_path(target)
    for path in sorted(set(there) | set(here)):
        if path not in there:
            return f"{path} is not in the checkpoint"
        if path not in here:
            return f"the checkpoint has {path}, which this run does not"
        if there[path] != here[path]:
            return f"{path} has shape {there[path]} in the checkpoint, {here[path]} here"
    return None


class Checkpoints:
    """Epoch checkpoints and the interrupted-run checkpoint of one workdir."""

    def __init__(self, directory: str, keep: int | None = None,
                 check: Callable[[dict[str, Any]], None] | None = None, best: KeepBest | None = None) -> None:
        """`check(meta)` runs before a checkpoint is restored and raises if it belongs to another run: another
        model's parameters would not fit the template and must not be mistaken for a corrupt checkpoint.
        `best` keeps the best epochs beside the `keep` newest (with `keep` None every epoch is kept anyway)."""
        self.directory = directory
        self.check = check
        self.epochs = _manager(directory, "epoch", keep or None, best)
        self._interrupted: ocp.CheckpointManager | None = None

    @property
    def interrupted(self) -> ocp.CheckpointManager:
        """The manager of `interrupted/`, which exists only while it holds a checkpoint: a run that was never
        stopped mid-epoch (or was killed before it could save) leaves no empty folder."""
        if self._interrupted is None:
            self._interrupted = _manager(os.path.join(self.directory, "interrupted"), "step", 1)
        return self._interrupted

    def _interrupted_steps(self) -> list[int]:
        if self._interrupted is None and not os.path.isdir(os.path.join(self.directory, "interrupted")):
            return []
        return list(self.interrupted.all_steps())

    def save_epoch(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        """`meta["metrics"]`, the epoch's history record, is also what the best-epoch policy ranks."""
        metrics = {k: float(v) for k, v in meta.get("metrics", {}).items() if isinstance(v, int | float)}
        self._save(self.epochs, epoch, state, meta, metrics or None)

    def save_interrupted(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self._save(self.interrupted, step, state, meta)

    @staticmethod
    def _save(manager: ocp.CheckpointManager, number: int, state: Any, meta: dict[str, Any],
              metrics: dict[str, float] | None = None) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(serialization.to_state_dict(state)),
                                  meta=ocp.args.JsonSave(meta))
        try:
            with _raised_not_logged():
                write_checkpoint(manager, number, args, metrics)
        except Exception as error:
            reason = _storage_problem(error)
            if reason is None:
                raise
            # Orbax's writer threads may still be finishing the half-written temporary folder; the next run
            # removes it when it opens the checkpoints (cleanup_tmp_directories). They fail once more when the
            # process exits under them, and would log that after the run's one-line error.
            logging.getLogger("absl").addFilter(_ORBAX_THREADS_AFTER_FAILURE)
            raise UserError(f"could not write a checkpoint into {manager.directory} ({reason}); "
                            "free disk space or choose another --workdir, then run the same command again") from error

    def saved_epochs(self) -> list[int]:
        return sorted(self.epochs.all_steps())

    def saved_metrics(self) -> dict[int, dict[str, Any] | None]:
        """Each saved epoch's metrics (its history record, kept in its meta; None for checkpoints older than
        that): what `--checkpoint=best` ranks."""
        metrics = {}
        for epoch in self.saved_epochs():
            try:
                metrics[epoch] = self.read_meta(self.epochs, epoch).get("metrics")
            except Exception as error:  # noqa: BLE001 - a damaged checkpoint is named, never ranked
                log.warning("Skipping unreadable checkpoint %s (%s)", self._name(self.epochs, epoch),
                            _first_line(error))
                metrics[epoch] = None
        return metrics

    def read_meta(self, manager: ocp.CheckpointManager, number: int) -> dict[str, Any]:
        return manager.restore(number, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, manager: ocp.CheckpointManager, number: int, template: Any) -> tuple[Any, dict[str, Any]]:
        target = serialization.to_state_dict(template)
        difference = _first_difference(manager.item_metadata(number)["state"], target)
        if difference:  # a readable checkpoint of another setup: refused, never taken for a damaged one
            raise UserError(f"{self._name(manager, number)} holds another training state than this run builds "
                            f"({difference}): the optimizer or its options changed since it was saved. Keep the "
                            "settings of the run that saved it, or start a new --workdir with "
                            f"--config.init_from={os.path.dirname(self.directory)} to take over only its weights")
        restored = manager.restore(number, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                    meta=ocp.args.JsonRestore()))
        return serialization.from_state_dict(template, restored["state"]), restored["meta"]

    def restore_epoch(self, epoch: int, template: Any) -> tuple[Any, dict[str, Any]]:
        if epoch not in self.saved_epochs():
            raise UserError(f"no checkpoint for epoch {epoch} in {self.directory}; saved epochs: "
                            f"{', '.join(map(str, self.saved_epochs())) or 'none'}")
        try:
            return self.restore(self.epochs, epoch, template)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many types for a damaged file
            raise UserError(f"{self._name(self.epochs, epoch)} is corrupt or of another model "
                            f"({_first_line(error)}); use another epoch") from error

    def restore_variables(self, epoch: int, template: dict[str, Any], ema: bool = False) -> dict[str, Any]:
        """Parameters and BatchNorm statistics of a saved epoch, in the dtypes of `template`; no optimizer.

        Needs no optimizer state to restore into, so evaluation and fine-tuning read checkpoints of any
        optimizer. Every array is checked against `template` (another model's checkpoint is an error).
        With `ema`, the moving average of the weights that the run kept instead of the weights themselves.
        """
        if epoch not in self.saved_epochs():
            raise UserError(f"no checkpoint for epoch {epoch} in {self.directory}; saved epochs: "
                            f"{', '.join(map(str, self.saved_epochs())) or 'none'}")
        name = self._name(self.epochs, epoch)
        try:
            raw = self.epochs.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many types for a damaged file
            raise UserError(f"{name} is corrupt ({_first_line(error)}); use another epoch") from error
        raw_state = raw.get("state", raw)  # the train state, under the checkpoint's "state" entry
        if ema and "ema" not in raw_state:
            raise UserError(f"{name} was trained without a moving average of the weights (ema_decay=0); "
                            "drop --ema / ema_eval")
        weights = raw_state["ema"] if ema else raw_state
        loaded = {"params": weights["params"], "batch_stats": weights.get("batch_stats") or {}}
        result = {}
        for collection, tree in template.items():
            found = dict(_flatten(loaded.get(collection, {})))
            leaves = []
            for key, leaf in _flatten(tree):
                if key not in found or np.shape(found[key]) != np.shape(leaf):
                    raise UserError(f"{name}: {collection}/{'/'.join(key)} is missing or has another shape; "
                                    "the checkpoint is of a different model")
                leaves.append(jnp.asarray(found[key], dtype=leaf.dtype))
            result[collection] = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), leaves)
        return result

    def restore_latest(self, template: Any, max_epoch: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """The newest readable checkpoint by training step (epoch or interrupted), or None if there is none.

        `max_epoch` ignores checkpoints beyond that epoch (resuming from an earlier epoch on purpose).
        Checkpoints that cannot be read are reported and moved into `checkpoints.corrupt-<time>/`: kept for
        a look, and out of the way of the run, which saves those epochs again.
        """
        candidates = [(self.epochs, n) for n in self.epochs.all_steps()]
        candidates += [(self.interrupted, n) for n in self._interrupted_steps()]
        ordered, corrupt = [], []
        for manager, number in candidates:
            try:
                meta = self.read_meta(manager, number)
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is reported and skipped
                log.warning("Skipping unreadable checkpoint %s (%s)", self._name(manager, number), _first_line(error))
                corrupt.append(self._name(manager, number))
                continue
            if max_epoch is not None and (meta["epoch"], meta["batch"]) > (max_epoch, 0):
                continue
            ordered.append((meta["step"], number, manager, meta))
        chosen = None
        for _, number, manager, meta in sorted(ordered, key=lambda item: item[:2], reverse=True):
            if self.check is not None:
                self.check(meta)
            try:
                chosen = self.restore(manager, number, template)
                break
            except UserError:
                raise
            except Exception as error:  # noqa: BLE001
                log.warning("Checkpoint %s is corrupt (%s); falling back to the previous one",
                            self._name(manager, number), _first_line(error))
                corrupt.append(self._name(manager, number))
        self._set_aside(corrupt)
        return chosen

    def _set_aside(self, corrupt: list[str]) -> None:
        if corrupt and jax.process_index() == 0:
            target = f"{self.directory}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            os.makedirs(target, exist_ok=True)
            for path in corrupt:
                log.warning("Moved the corrupt checkpoint %s to %s", path, shutil.move(path, target))
        self._all_wait("cnn_flax: corrupt checkpoints set aside")  # every process calls this
        if corrupt or jax.process_count() > 1:
            self.reload()

    def _name(self, manager: ocp.CheckpointManager, number: int) -> str:
        prefix = "epoch" if manager is self.epochs else "interrupted/step"
        return os.path.join(self.directory, f"{prefix}_{number}")

    def set_aside_after(self, epoch: int) -> list[str]:
        """Move checkpoints past `epoch` (and any interrupted one) into a dated folder, to restart from `epoch`.

        This is the deck's "stop, lower the rate, resume" workflow; nothing is deleted. Every process calls
        it; process 0 moves the folders while the others wait, then all list the checkpoints again.
        """
        later = [n for n in self.epochs.all_steps() if n > epoch]
        interrupted = self._interrupted_steps()
        moved = []
        if (later or interrupted) and jax.process_index() == 0:
            target = f"{self.directory}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}"
            os.makedirs(target, exist_ok=True)
            for number in later:
                moved.append(shutil.move(os.path.join(self.directory, f"epoch_{number}"), target))
            for number in interrupted:
                moved.append(shutil.move(os.path.join(self.directory, "interrupted", f"step_{number}"), target))
        self._all_wait("cnn_flax: checkpoints set aside")
        if later or interrupted or jax.process_count() > 1:
            self.reload()
        self._remove_empty_interrupted()
        return moved

    @staticmethod
    def _all_wait(name: str) -> None:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    def reload(self) -> None:
        """Re-read the folders (another process may have moved checkpoints since the managers listed them)."""
        self.epochs.reload()
        if self._interrupted is not None:
            self._interrupted.reload()

    def clear_interrupted(self) -> None:
        for number in self._interrupted_steps():
            self.interrupted.delete(number)
        self._remove_empty_interrupted()

    def _remove_empty_interrupted(self) -> None:
        """`interrupted/` goes with its last checkpoint (Orbax's managers create their folder when opened)."""
        if self._interrupted is not None:
            self._interrupted.close()
            self._interrupted = None
        if jax.process_index() == 0:
            with contextlib.suppress(OSError):  # not empty (a checkpoint, or Orbax's
                os.rmdir(os.path.join(self.directory, "interrupted"))  # temporary of one): kept

    def close(self) -> None:
        self.epochs.close()
        if self._interrupted is not None:
            self._interrupted.close()


def _flatten(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    return [(tuple(str(getattr(k, "key", k)) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def load_variables(path: str, template: dict[str, Any], ema: bool = False) -> dict[str, Any]:
    """The variables of another run (their moving average with `ema`): `path` is its workdir (latest epoch)
    or one `checkpoints/epoch_N`."""
    path = os.path.abspath(path)
    match = re.fullmatch(r"epoch_(\d+)", os.path.basename(path))
    directory = os.path.dirname(path) if match else os.path.join(path, "checkpoints")
    checkpoints = Checkpoints(directory)
    try:
        epochs = checkpoints.saved_epochs()
        if not epochs:
            raise UserError(f"{path} holds no epoch checkpoints; give a workdir or a checkpoints/epoch_N folder")
        epoch = int(match.group(1)) if match else epochs[-1]
        variables = checkpoints.restore_variables(epoch, template, ema)
    finally:
        checkpoints.close()
    log.info("Read the weights of epoch %d in %s", epoch, directory)
    return variables

