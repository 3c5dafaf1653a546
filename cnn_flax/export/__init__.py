"""A trained model out of cnn_flax: SavedModel, ONNX and a `jax.export` program, preprocessing inside.

  function     the one uint8 → probabilities/top-5 function every format is written from
  jax_program  model.jax (jax.export) and `load_jax`, which calls it without any model code
  saved_model  saved_model/ (orbax-export) and the optional TFLite conversion
  onnx         model.onnx (jax2onnx), checked by onnxruntime; optional `[export]` extra
  manifest     labels.txt and export.json (facts, sha256 of every file)
  write        the folder, all or nothing;  run: `--mode=export` from a config and workdir
  runtimes     an export folder opened with one runtime; predict and benchmark build on it

Only `run` knows about configs and checkpoints; a shipped folder needs none of them.
"""

from cnn_flax.export.jax_program import load_jax
from cnn_flax.export.runtimes import RUNTIMES, ExportedModel, open_export

__all__ = ["RUNTIMES", "ExportedModel", "load_jax", "open_export"]
