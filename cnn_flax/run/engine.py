"""A config on this machine's devices: its experiment, the parallel setup, batches and compiled steps.

`Engine` is what evaluation needs and nothing more (no optimizer, no train-split step count);
`cnn_flax.run.train.Trainer` extends it with the optimizer and the train step. Every step is compiled
through `Engine.compile`, which counts how often JAX traced it: a count above 1 means a step was
compiled again (a changed shape or dtype), which costs seconds to minutes each time.

"""

import collections
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections

from cnn_flax.run.experiment import build_experiment, preprocessors, setup_parallel
from cnn_flax.training.parallel import device_prefetch


class Engine:
    """The experiment of `config` (data source, model), its parallel setup and its batches on the devices."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        self.config = config
        self.experiment = build_experiment(config)
        self.parallel = setup_parallel(config)
        self.preprocess = preprocessors(self.experiment)
        self._on_device: dict[str, Any] = {}  # split -> OnDeviceBatches, loaded on first use
        self._traces: collections.Counter[str] = collections.Counter()

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

    def eval_batches(self, split: str) -> Iterator[dict]:
        """The split in order on the devices, padded rows masked; only the first eval_steps when that is > 0."""
        batches = self.batches(split, shuffle=False, epoch=0, drop_remainder=False)
        if self.config.eval_steps > 0:
            batches = (b for _, b in zip(range(self.config.eval_steps), batches, strict=False))
        return device_prefetch(batches, self.parallel.put_batch)
