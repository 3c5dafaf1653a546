"""cnn_flax: the networks of the 'CNN Architectures II' deck as Flax Linen modules, with a training engine.

Layers, lowest first; each imports only from those below it (pyproject.toml's import-linter contract,
checked in CI):
  leaves      errors, atomic, defaults, console, runtime, lazy, tensorflow_cpu: import nothing of cnn_flax
              (tensorflow_cpu only console).
  models      Linen modules and their registry; plain Linen, no knowledge of how they are run.
  data        datasets (sources/), augmentation and preprocessing (augment/), the registry, batching.
  evaluation  rank-k, reports, figures and the HTML page, from logits, labels and files.
  training    state, steps, optimizers and schedules, parallelism, checkpoints, the epoch loop and hooks.
  pretrained  other frameworks' weight files into our variables.
  export      SavedModel, ONNX, jax.export and TFLite writers, and the runtimes that read them back.
  run         a config turned into a run: experiment, engine, train, evaluator, modes, predict, export.
  bench       benchmarks, profiles, the comparison peers and the table.
launch.py sits on top: flags, logging, the distributed start, then one entry of its MODES table.
"""

from cnn_flax.lazy import lazy_attributes

__version__ = "0.1.0"

# The research entry points, imported on first use so that `import cnn_flax.models` stays cheap.
_LAZY = {"load_run": "cnn_flax.run.load", "load_model": "cnn_flax.run.load", "Run": "cnn_flax.run.load",
         "Model": "cnn_flax.run.load", "to_nnx": "cnn_flax.models.to_nnx"}
__all__ = ["__version__", *_LAZY]
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
