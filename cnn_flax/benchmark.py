"""Throughput of a config's model on this machine: `--mode=benchmark` prints one line of figures.

step: the bare compiled train step on a batch already on the device (the ceiling); loop: the real
training loop (`Trainer.train`, with its input pipeline, metrics, progress bar, evaluation and
checkpoint) on the config's data, or on synthetic data of the right shape when the dataset is absent;
eval: inference on a device-resident batch; input: the host input pipeline alone, when the data exists.
Compilation is excluded (each phase runs once before it is timed); each figure is the median of
several repetitions, because shared machines are noisy.
"""

import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import ml_collections

from cnn_flax.errors import UserError

REPEATS = 3


def _median_rate(run: Callable[[], int], repeats: int = REPEATS) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        images = run()
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def _data_available(config: ml_collections.ConfigDict) -> bool:
    from cnn_flax.data import make_source

    try:
        make_source(config.data).info  # noqa: B018 - reading the facts is the check
    except UserError:
        return False
    return True


def benchmark_config(config: ml_collections.ConfigDict, steps: int, use_data: bool) -> ml_collections.ConfigDict:
    """The config cut to one short epoch; on random images of the same shape when `use_data` is False."""
    config = ml_collections.ConfigDict(config.to_dict())
    if not use_data:
        from cnn_flax.experiment import NOMINAL_CLASSES

        classes = config.model.get("num_classes", -1)
        classes = NOMINAL_CLASSES.get(config.data.name, 10) if classes in (-1, None) else classes
        config.data.name = "synthetic"
        config.data.num_classes = classes
        config.data.synthetic_sizes = dict(train=steps * config.batch_size, val=config.batch_size,
                                           test=config.batch_size)
    config.update(dict(num_epochs=1, steps_per_epoch=steps, eval_steps=1, checkpoint_every_epochs=1,
                       log_every_steps=max(steps // 2, 1), init_from=""))
    config.wandb.enabled = False
    return config


def benchmark(config: ml_collections.ConfigDict, workdir: str, steps: int = 20) -> str:
    from cnn_flax.train import Trainer
    from cnn_flax.training.logging import Reporter
    from cnn_flax.training.metrics import TrainMetrics
    from cnn_flax.training.state import TrainState

    has_data = _data_available(config)
    run_config = benchmark_config(config, steps, has_data)
    batch_size = run_config.batch_size
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(run_config, scratch)
        parallel = trainer.parallel
        first = next(iter(trainer.split_batches("train", shuffle=True, epoch=0, drop_remainder=True)))
        batch = parallel.put_batch(first)
        from cnn_flax.experiment import initial_variables

        state = parallel.put_replicated(TrainState.create(initial_variables(trainer.exp), trainer.tx))
        metrics = parallel.put_replicated(TrainMetrics.empty())

        def bare_steps() -> int:
            nonlocal state, metrics
            for _ in range(steps):
                state, metrics = trainer.train_step(state, batch, metrics)
            jax.block_until_ready(metrics)
            return steps * batch_size

        bare_steps()
        step_rate = _median_rate(bare_steps)

        def inference() -> int:
            out = None
            for _ in range(steps):
                out = trainer.predict_step[False](state, batch)
            jax.block_until_ready(out)
            return steps * batch_size

        inference()
        eval_rate = _median_rate(inference)

        def loop() -> int:
            """One whole epoch of the real loop in a fresh workdir, with the compiled steps reused."""
            run_dir = tempfile.mkdtemp(dir=scratch)
            trainer.files = type(trainer.files)(run_dir)
            reporter = Reporter(run_dir, steps, None, {})
            with contextlib.redirect_stderr(io.StringIO()):  # no progress bars in the figures' output
                trainer.train(reporter)
            reporter.close()
            return steps * batch_size

        loop()
        loop_rate = _median_rate(loop)
        line = (f"benchmark model={trainer.exp.model_config['name']} batch={batch_size} "
                f"devices={jax.device_count()} step_img_per_s={step_rate:.1f} loop_img_per_s={loop_rate:.1f} "
                f"eval_img_per_s={eval_rate:.1f}")
        if has_data:
            from cnn_flax.data.bench import measure_input

            line += f" input_img_per_s={measure_input(trainer.exp.source, 'train', batch_size, 3.0):.1f}"
    kind = jax.devices()[0].device_kind.replace(" ", "_")
    return f"{line} data={'real' if has_data else 'synthetic'} device={kind}"
