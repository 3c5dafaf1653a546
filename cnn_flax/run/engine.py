"""A config on this machine's devices: its experiment, the parallel setup, batches and compiled steps.

`Engine` is what evaluation needs and nothing more (no optimizer, no train-split step count);
`cnn_flax.run.train.Trainer` extends it with the optimizer and the train step. Every step is compiled
through `Engine.compile`, which counts how often JAX traced it: a count above 1 means a step was
compiled again (a changed shape or dtype), which costs seconds to minutes each time.

"""

import collections
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections

from cnn_flax.errors import UserError
from cnn_flax.run.experiment import build_experiment, preprocessors, setup_parallel
from cnn_flax.training.parallel import device_prefetch

log = logging.getLogger("cnn_flax")


class Engine:
    """The experiment of `config` (data source, model), its parallel setup and its batches on the devices."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        self.config = config
        self.experiment = build_experiment(config)
        self.parallel = setup_parallel(config)
        self.preprocess = preprocessors(self.experiment)
        self._on_device: dict[str, Any] = {}  # split -> OnDeviceBatches, loaded on first use
        self._traces: collections.Counter[str] = collections.Counter()
        self._precise_bn: dict[Any, Any] = {}  # compiled precise-BN steps, made on first use

    # -- compiled steps -------------------------------------------------------------------------------
    def compile(self, name: str, step: Callable, donate: tuple[int, ...] = (0, 2)) -> Callable:
        """`step` compiled for the parallel setup (state and metrics donated by default), its traces counted."""
        return self.parallel.compile_step(self._counted(name, step), donate=donate)

    def compile_predict(self, name: str, step: Callable) -> Callable:
        """A `(variables, batch) -> logits` step, its output left sharded by rows."""
        return self.parallel.compile_predict(self._counted(name, step))

    def compile_count(self, name: str) -> int:
        """How many times the step compiled as `name` was traced (compiled) so far; 1 means never again."""
        return self._traces[name]

    def _counted(self, name: str, step: Callable) -> Callable:
        @functools.wraps(step)
        def traced(*args: Any) -> Any:
            self._traces[name] += 1  # Python runs only while JAX traces: once per compilation
            return step(*args)
        return traced

    # -- batches --------------------------------------------------------------------------------------
    def batches(self, split: str, *, shuffle: bool, epoch: int, drop_remainder: bool,
                start_batch: int = 0) -> Iterator[dict]:
        """Host batches from the data source, or (data.on_device) batches cut on the accelerator.

        Both follow the same example order, so a run may switch between them and get the same batches.
        """
        config = self.config
        options = dict(shuffle=shuffle, seed=config.seed, epoch=epoch, drop_remainder=drop_remainder,
                       start_batch=start_batch)
        if not config.data.on_device:
            return self.experiment.source.batches(split, config.batch_size, **options,
                                                  process_index=jax.process_index(), process_count=jax.process_count())
        if split not in self._on_device:
            from cnn_flax.data import OnDeviceBatches

            self._on_device[split] = OnDeviceBatches(*self.experiment.source.arrays(split), self.parallel.mesh)
        return self._on_device[split].batches(config.batch_size, **options)

    def precise_batch_stats(self, variables: dict[str, Any], num_batches: int | None = None) -> dict[str, Any]:
        """`variables` (on the devices) with BatchNorm's running statistics recomputed over the first
        `num_batches` (default: config.precise_bn_batches) shuffled training batches (training/batch_norm.py);
        unchanged for 0 or a model without BatchNorm."""
        from cnn_flax.training.batch_norm import average_batch_stats, make_batch_stats_step

        count = int(self.config.precise_bn_batches if num_batches is None else num_batches)
        if count < 0:
            raise UserError(f"precise_bn_batches={count} must be 0 (off) or a number of training batches")
        if not count or not jax.tree_util.tree_leaves(variables.get("batch_stats", {})):
            return variables
        if "precise_bn" not in self._precise_bn:
            model, accum = self.experiment.model, self.config.optimizer.accum_steps
            for start in (0.0, 1.0):
                step = make_batch_stats_step(model, self.preprocess, accum_steps=accum, start=start)
                self._precise_bn[start] = self.compile(f"precise_bn_{start:g}", step, donate=())
            self._precise_bn["precise_bn"] = True
        batches = self.batches("train", shuffle=True, epoch=0, drop_remainder=True)
        # Each update comes to the host as it is made and the mean is taken there: a few KB per batch, and
        # no chain of eager adds across the devices while the next compiled steps are still in flight.
        fetch = self.parallel.fetch
        updates, probe = [], None
        for _, batch in zip(range(count), device_prefetch(batches, self.parallel.put_batch), strict=False):
            updates.append(fetch(self._precise_bn[0.0](variables, batch)))
            if probe is None:
                probe = fetch(self._precise_bn[1.0](variables, batch))
        if len(updates) < count:
            log.warning("precise_bn_batches=%d: the train split has %d batches of %d; used them all", count,
                        len(updates), self.config.batch_size)
        stats = average_batch_stats(updates, updates[0], probe)
        return {**variables, "batch_stats": self.parallel.put_replicated(stats)}

    def eval_batches(self, split: str) -> Iterator[dict]:
        """The split in order on the devices, padded rows masked; only the first eval_steps when that is > 0."""
        batches = self.batches(split, shuffle=False, epoch=0, drop_remainder=False)
        if self.config.eval_steps > 0:
            batches = (b for _, b in zip(range(self.config.eval_steps), batches, strict=False))
        return device_prefetch(batches, self.parallel.put_batch)


def precise_host_variables(config: ml_collections.ConfigDict, variables: dict[str, Any]) -> dict[str, Any]:
    """Host `variables` with config.precise_bn_batches' recomputed BatchNorm statistics (as they are for 0):
    what predict and export use, which read weights without an Engine of their own."""
    if not config.precise_bn_batches:
        return variables
    engine = Engine(config)
    on_devices = engine.precise_batch_stats(engine.parallel.put_replicated(variables))
    return engine.parallel.fetch(on_devices)
