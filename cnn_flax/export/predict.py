"""`--mode=predict --export_dir=DIR`: top-5 classes of image files and folders from an export folder alone.

The exported artifact is one more `probabilities(uint8 batch)` for the project's one prediction path
(`cnn_flax.predict.classify`), and files are decoded as the run decoded them (recorded in export.json:
a folder dataset's resize, else Keras's load_img), so the answers are those of `--mode=predict` on the
run. They go to predictions.json and predictions.csv in the workdir given, or by default the folder
that holds the export (for WORKDIR/export, the run's workdir).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cnn_flax.errors import UserError
from cnn_flax.export.runtimes import open_export

log = logging.getLogger("cnn_flax")
BATCH = 64


def image_decoding(data_config) -> dict[str, Any]:
    """How the run's predict decodes a file, for export.json (see `_loader`)."""
    if data_config.name == "folder":
        return {"kind": "folder", "resize": data_config.resize}
    return {"kind": "keras_load_img", "interpolation": "nearest"}


def _loader(decoding: dict[str, Any], size: tuple[int, int]):
    if decoding.get("kind") == "folder":
        from cnn_flax.image_decode import load_square

        return lambda path: load_square(path, size[0], decoding["resize"])
    from cnn_flax.pretrained.predict import keras_loader

    return keras_loader(size, decoding.get("interpolation", "nearest"))


def predict_from_export(export_dir: str, paths: list[str], workdir: str | None = None,
                        runtime: str = "jax") -> list[dict[str, Any]]:
    from cnn_flax.modes import _prediction_files
    from cnn_flax.predict import classify, format_predictions, write_predictions

    files = _prediction_files(paths)
    model = open_export(export_dir, runtime)
    load = _loader(model.manifest.get("image_decoding", {}), model.input_shape[:2])
    ranked, skipped = classify(model.probabilities, files, load, model.class_names, batch_size=BATCH)
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    if not ranked:
        raise UserError(f"none of the {len(files)} files could be read (first: {skipped[0][0]}: {skipped[0][1]})")
    workdir = workdir or os.path.dirname(os.path.abspath(export_dir))
    json_path, csv_path = write_predictions(workdir, ranked)
    log.info("predictions of %d images in %s and %s", len(ranked), json_path, csv_path)
    if len(ranked) <= 20:
        print(format_predictions([p for p, _ in ranked], [t for _, t in ranked]))
    else:
        print(f"{len(ranked)} images classified ({len(skipped)} unreadable); predictions.json and predictions.csv "
              f"in {workdir}")
    return [dict(image=path, top5=top) for path, top in ranked]
