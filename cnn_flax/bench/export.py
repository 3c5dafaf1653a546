"""`--mode=benchmark --export_dir=DIR`: inference speed of each runtime on the same export folder.

One line per runtime whose artifact the folder holds (JAX, TensorFlow SavedModel, ONNX Runtime, and
TFLite when exported): images per second at batch 1 (latency-bound serving) and batch 64 (throughput).
The first call of each (compilation, graph optimisation) is not timed; each figure is the median of
several timed repetitions, each at least `MIN_SECONDS` long.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from cnn_flax.export import manifest
from cnn_flax.export.runtimes import RUNTIME_NAMES, RUNTIMES, open_export

BATCHES = (1, 64)
REPEATS = 3
MIN_SECONDS = 0.2


def images_per_second(probabilities, images: np.ndarray) -> float:
    probabilities(images)  # warm-up: compiles / optimises for this batch size
    rates = []
    for _ in range(REPEATS):
        calls, start = 0, time.perf_counter()
        while True:
            probabilities(images)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= MIN_SECONDS:
                break
        rates.append(calls * len(images) / elapsed)
    return statistics.median(rates)


def benchmark_export(directory: str, batches: tuple[int, ...] = BATCHES) -> str:
    formats = manifest.read_manifest(directory).get("formats", {})
    lines = []
    for runtime in (r for r in RUNTIMES if r in formats):
        model = open_export(directory, runtime)
        rng = np.random.default_rng(0)
        rates = {batch: images_per_second(model.probabilities,
                                          rng.integers(0, 256, (batch, *model.input_shape), dtype=np.uint8))
                 for batch in batches}
        lines.append(f"export_benchmark runtime={RUNTIME_NAMES[runtime]} "
                     + " ".join(f"batch{b}_img_per_s={rate:.1f}" for b, rate in rates.items()))
    return "\n".join(lines)
