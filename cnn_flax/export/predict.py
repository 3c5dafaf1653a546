"""`--mode=predict --export_dir=DIR`: top-5 classes of image files and folders from an export folder alone.

The exported artifact is one more `probabilities(uint8 batch)` for the project's one prediction path
(`cnn_flax.predict.classify`), and files are decoded as the run decoded them (recorded in export.json:
a folder dataset's resize, else Keras's load_img), so the answers are those of `--mode=predict` on the
run. They go to predictions.json and predictions.csv in the workdir given, or by default the folder
that holds the export (for WORKDIR/export, the run's workdir).
"""

from __future__ import annotations

import os
from typing import Any

from cnn_flax.export.runtimes import open_export

BATCH = 64


def predict_from_export(export_dir: str, paths: list[str], workdir: str | None = None,
                        runtime: str = "jax") -> list[dict[str, Any]]:
    from cnn_flax.predict import image_files, image_loader, predict_files

    files = image_files(paths)
    model = open_export(export_dir, runtime)
    load = image_loader(model.manifest.get("image_decoding", {}), model.input_shape[:2])
    workdir = workdir or os.path.dirname(os.path.abspath(export_dir))
    return predict_files(model.probabilities, files, load, model.class_names, workdir, batch_size=BATCH)
