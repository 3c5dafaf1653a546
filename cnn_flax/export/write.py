"""An export folder from an inference function: every format, labels, export.json, written all or nothing.

The folder is built under a temporary name beside its destination and renamed at the end, so an
interrupted or failed export never leaves a folder that looks complete; the name says which process
wrote it, so the next export removes what a killed one left (`cnn_flax.atomic.remove_stale_partials`).
ONNX is the one optional format: without the `[export]` extra, or for an operation ONNX cannot express,
the other formats are still written and export.json says why model.onnx is absent.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnn_flax.atomic import partial_path, remove_stale_partials
from cnn_flax.errors import UserError
from cnn_flax.export import manifest
from cnn_flax.export.function import InferenceFunction
from cnn_flax.export.hub_folder import write_hub_files
from cnn_flax.export.jax_program import PLATFORMS, export_jax_program
from cnn_flax.export.onnx import EXTRA_HINT, OnnxUnsupported, export_onnx, onnx_available

log = logging.getLogger("cnn_flax")
ONNX_CHOICES = {"auto": "auto", "true": "yes", "yes": "yes", "false": "no", "no": "no"}


def onnx_choice(value: Any) -> str:
    """export.onnx: 'auto' (written when the extra is installed), 'yes' (required) or 'no'; booleans work too."""
    choice = ONNX_CHOICES.get(str(value).strip().lower())
    if choice is None:
        raise UserError(f"export.onnx={value!r} is not known; use auto, yes or no")
    return choice


def check_destination(directory: str, overwrite: bool) -> None:
    if os.path.exists(directory) and not overwrite:
        raise UserError(f"{directory} already exists; pass --overwrite to replace it, or choose another --workdir")


def check_images(function: InferenceFunction, count: int = 2) -> np.ndarray:
    """Fixed pseudo-random images: the export's own checks do not depend on any data being present."""
    return np.random.default_rng(0).integers(0, 256, (count, *function.input_shape), dtype=np.uint8)


def write_export(function: InferenceFunction, directory: str, class_names: Sequence[str], facts: dict[str, Any],
                 onnx: Any = "auto", tflite: bool = False, overwrite: bool = False,
                 variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the export folder `directory`; returns its manifest (the content of export.json).

    With `variables` (the run's, all of them), the folder is also a Hugging Face model repository:
    model.safetensors, config.json and a README.md model card (hub_folder).
    """
    check_destination(directory, overwrite)
    onnx = onnx_choice(onnx)
    if onnx == "yes" and not onnx_available():
        raise UserError(f"export.onnx=yes needs jax2onnx and onnxruntime; {EXTRA_HINT} (or set "
                        "--config.export.onnx=no)")
    num_classes = function.num_classes
    if len(class_names) != num_classes:
        raise UserError(f"the model gives {num_classes} classes but {len(class_names)} class names were found; "
                        "set model.num_classes to match the data")
    directory = os.path.abspath(directory)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    remove_stale_partials(directory)
    partial = partial_path(directory)
    os.makedirs(partial)
    try:
        formats, notes, failed = _write_formats(function, partial, onnx, tflite)
        if variables is not None:
            write_hub_files(partial, variables, {**facts, "input_shape": function.input_shape}, class_names)
            formats["safetensors"] = manifest.ARTIFACTS["safetensors"]
        manifest.write_labels(partial, class_names)
        written = manifest.write_manifest(partial, {
            **facts, "inputs": {"images": f"uint8 [N, {', '.join(map(str, function.input_shape))}]"},
            "input_shape": list(function.input_shape), "num_classes": num_classes,
            "class_names": list(class_names), "outputs": {"probabilities": "float32 [N, C]",
                                                          "top5": f"int32 [N, {min(5, num_classes)}]"},
            "compute_dtype": "float32", "platforms": list(PLATFORMS), "formats": formats, "notes": notes})
        _replace(partial, directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for runtime, error in failed.items():  # the requested formats that could not be written, after the others
        if runtime == "tflite" or onnx == "yes":
            raise error
        log.warning("%s", error)
    return written


def _write_formats(function: InferenceFunction, directory: str, onnx: str,
                   tflite: bool) -> tuple[dict[str, str], dict[str, Any], dict[str, UserError]]:
    """Each format in turn; ONNX and TFLite may fail alone (why goes to `notes`, the error is returned)."""
    from cnn_flax.export.saved_model import TfliteUnsupported, convert_to_tflite, export_saved_model

    formats, notes, failed = {}, {}, {}
    steps = [("jax", lambda path: export_jax_program(function, path)),
             ("saved_model", lambda path: export_saved_model(function, path))]
    if onnx != "no" and onnx_available():
        images = check_images(function)
        steps.append(("onnx", lambda path: notes.update(onnx_max_abs_difference=export_onnx(function, path, images))))
    elif onnx == "auto":
        notes["onnx"] = f"not written: jax2onnx/onnxruntime are not installed ({EXTRA_HINT})"
    if tflite:
        steps.append(("tflite", lambda path: convert_to_tflite(os.path.join(directory, formats["saved_model"]),
                                                               path)))
    for runtime, write in steps:
        name = manifest.ARTIFACTS[runtime]
        start = time.perf_counter()
        try:
            write(os.path.join(directory, name))
        except (OnnxUnsupported, TfliteUnsupported) as error:
            notes[runtime] = str(error)
            failed[runtime] = error
            continue
        formats[runtime] = name
        notes[f"{runtime}_seconds"] = round(time.perf_counter() - start, 2)
        log.info("export: %s written in %.1f s", name, notes[f"{runtime}_seconds"])
    return formats, notes, failed


def _replace(partial: str, directory: str) -> None:
    """Put the finished folder in place; an old export (allowed by --overwrite) goes only once it is done.

    The old folder is first renamed to a temporary name of its own, so that a kill before it is removed
    leaves it for the next export to remove, like the new folder's temporary.
    """
    old = None
    if os.path.exists(directory):
        old = partial_path(directory)
        os.rename(directory, old)
    os.rename(partial, directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
