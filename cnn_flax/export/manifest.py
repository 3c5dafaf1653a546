"""export.json and labels.txt: what an export folder holds, where it came from, and the checksum of each file.

export.json is the folder's table of contents: readers find the input shape and class names there, and
every file's sha256, so a truncated copy or a damaged model file is named before a runtime trips over it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

from cnn_flax.errors import UserError

MANIFEST = "export.json"
LABELS = "labels.txt"
# The artifact of each runtime, relative to the export folder (a folder means every file in it).
ARTIFACTS = {"jax": "model.jax", "saved_model": "saved_model", "onnx": "model.onnx", "tflite": "model.tflite",
             "safetensors": "model.safetensors"}


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_under(directory: str, name: str) -> list[str]:
    """`name` itself if it is a file, else every file below it; paths relative to `directory`, sorted."""
    root = os.path.join(directory, name)
    if os.path.isfile(root):
        return [name]
    found = []
    for folder, _, files in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, f), directory) for f in files]
    return sorted(found)


def write_labels(directory: str, class_names: Iterable[str]) -> None:
    with open(os.path.join(directory, LABELS), "w", encoding="utf-8") as handle:
        handle.writelines(f"{name}\n" for name in class_names)


def write_manifest(directory: str, facts: dict[str, Any]) -> dict[str, Any]:
    """export.json: `facts` plus the sha256 of every file already in `directory`."""
    import jax

    import cnn_flax

    names = sorted(n for n in os.listdir(directory) if n != MANIFEST)
    files = {path: sha256(os.path.join(directory, path)) for name in names for path in files_under(directory, name)}
    manifest = {**facts, "versions": {"cnn_flax": cnn_flax.__version__, "jax": jax.__version__}, "files": files}
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    return manifest


def read_manifest(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; --export_dir must be a folder written by --mode=export")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        manifest["input_shape"], manifest["class_names"], manifest["files"]  # noqa: B018 - the keys readers need
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is damaged ({type(error).__name__}: {error}); export the model again") from None
    return manifest


def verify(directory: str, manifest: dict[str, Any], name: str) -> None:
    """Every file of artifact `name` is present and has the checksum export.json records."""
    expected = {path: digest for path, digest in manifest["files"].items()
                if path == name or path.startswith(name + os.sep)}
    if not expected:
        raise UserError(f"{os.path.join(directory, name)} is not part of this export (export.json lists "
                        f"{', '.join(sorted({p.split(os.sep)[0] for p in manifest['files']}))})")
    for path, digest in sorted(expected.items()):
        full = os.path.join(directory, path)
        if not os.path.isfile(full):
            raise UserError(f"{full} is missing; copy the whole export folder or export again")
        if sha256(full) != digest:
            raise UserError(f"{full} is damaged (its sha256 differs from export.json); copy it again or export "
                            "again")
