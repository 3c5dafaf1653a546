"""`--mode=predict --export_dir=DIR`: top-5 classes per image from an export folder alone.

The answers are written like the config-based predict (predictions.json, the same table), into the
workdir given, or by default the folder that holds the export (for WORKDIR/export, the run's workdir).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.export.runtimes import open_export
from cnn_flax.pretrained import format_predictions, load_images, top_k_predictions
from cnn_flax.training.history import write_json_atomically

BATCH = 32


def predict_from_export(export_dir: str, paths: list[str], workdir: str | None = None,
                        runtime: str = "jax") -> list[dict[str, Any]]:
    if not paths:
        raise UserError("--mode=predict needs --images=a.jpg,b.png")
    model = open_export(export_dir, runtime)
    height, width, _ = model.input_shape
    probs = np.concatenate([model.probabilities(load_images(paths[start:start + BATCH], (height, width)))
                            for start in range(0, len(paths), BATCH)])
    top = top_k_predictions(probs, model.class_names, k=min(5, probs.shape[-1]))
    results = [dict(image=path, top5=entries) for path, entries in zip(paths, top, strict=True)]
    workdir = workdir or os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(workdir, exist_ok=True)
    write_json_atomically(os.path.join(workdir, "predictions.json"), results)
    print(format_predictions(paths, top))
    return results
