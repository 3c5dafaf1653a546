"""Classifying image files: the one path from files to ranked classes that every kind of model uses.

A model is reduced to `probabilities(uint8 batch) -> [N, C]` (our Flax models through
`model_probabilities`; anything else that maps images to class probabilities fits too), and images to
`load(path) -> uint8 [H, W, 3]`. `classify` then decodes a batch at a time in threads, pads the last batch
so the model compiles once, and ranks the classes; files that cannot be read are returned with the
reason instead of stopping a run over thousands of photos. `write_predictions` leaves
predictions.json (every image's top five) and predictions.csv (one row per image, for a spreadsheet).
"""

from __future__ import annotations

import concurrent.futures
import csv
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnn_flax.atomic import atomic_file, write_json
from cnn_flax.errors import UserError

# {'index': int, 'name': str, 'prob': float}: one ranked class, as written to predictions.json.
Prediction = dict[str, Any]
Probabilities = Callable[[np.ndarray], np.ndarray]
Loader = Callable[[str], np.ndarray]
Problem = (UserError, OSError, ValueError)  # what a loader raises for a file it cannot use


def top_k_predictions(probs: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[list[Prediction]]:
    """Per row of `probs` [N, C], its k most probable classes as {index, name, prob}, most probable first.

    Ties keep the lower class index first. k larger than C gives all C classes.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {probs.shape}")
    if probs.shape[1] != len(class_names):
        raise UserError(f"the model gives {probs.shape[1]} classes but {len(class_names)} class names were "
                        "given; set model.num_classes to match the class names (1000 for ImageNet)")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"index": int(i), "name": class_names[i], "prob": float(row[i])} for i in top]
            for row, top in zip(probs, order, strict=True)]


def format_predictions(paths: Sequence[str | os.PathLike], top: Sequence[Sequence[Mapping[str, Any]]]) -> str:
    """A printable table: one block per image, one line per ranked class (rank, probability, index, name)."""
    names = [os.fspath(path) for path in paths]
    width = max([len("image"), *map(len, names)])
    lines = [f"{'image':<{width}}  rank  {'prob':>7}  class"]
    for name, predictions in zip(names, top, strict=True):
        for rank, entry in enumerate(predictions, start=1):
            label = name if rank == 1 else ""
            cls = f"{entry['index']:>4} {entry['name']}"
            lines.append(f"{label:<{width}}  {rank:>4}  {entry['prob']:>7.4f}  {cls}")
    return "\n".join(lines)


def model_probabilities(model: Any, variables: Mapping[str, Any],
                        preprocess: Callable[[jax.Array], jax.Array]) -> Probabilities:
    """A Flax model (inference mode) and its input preprocessing as one compiled uint8 -> softmax function."""
    @jax.jit
    def probabilities(weights: Mapping[str, Any], images: jax.Array) -> jax.Array:
        logits = model.apply(weights, preprocess(images), train=False)
        return jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)

    return lambda images: np.asarray(probabilities(variables, jnp.asarray(images)))


def _load_all(load: Loader, paths: Sequence[str], pool: concurrent.futures.Executor) -> list[np.ndarray | str]:
    def one(path: str) -> np.ndarray | str:
        try:
            return load(path)
        except Problem as problem:
            return " ".join(str(problem).split()) or type(problem).__name__

    return list(pool.map(one, paths))


def classify(probabilities: Probabilities, paths: Sequence[str | os.PathLike], load: Loader,
             class_names: Sequence[str], *, k: int = 5, batch_size: int = 64
             ) -> tuple[list[tuple[str, list[Prediction]]], list[tuple[str, str]]]:
    """(path, top-k) for every readable file in order, and (path, reason) for the others."""
    paths = [os.fspath(p) for p in paths]
    batch_size = max(1, min(batch_size, len(paths)))
    ranked: list[tuple[str, list[Prediction]]] = []
    skipped: list[tuple[str, str]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            loaded = _load_all(load, chunk, pool)
            good = [(p, x) for p, x in zip(chunk, loaded, strict=True) if isinstance(x, np.ndarray)]
            skipped += [(p, x) for p, x in zip(chunk, loaded, strict=True) if isinstance(x, str)]
            if not good:
                continue
            images = np.stack([x for _, x in good])
            padded = np.zeros((batch_size, *images.shape[1:]), np.uint8)
            padded[:len(images)] = images
            probs = probabilities(padded)[:len(images)]
            ranked += list(zip([p for p, _ in good], top_k_predictions(probs, class_names, min(k, probs.shape[1])),
                               strict=True))
    return ranked, skipped


def write_predictions(directory: str, ranked: Sequence[tuple[str, Sequence[Prediction]]]) -> tuple[str, str]:
    """predictions.json ([{image, top5}]) and predictions.csv (path, class, probability, top5), atomically."""
    json_path = os.path.join(directory, "predictions.json")
    write_json(json_path, [dict(image=path, top5=list(top)) for path, top in ranked])
    csv_path = os.path.join(directory, "predictions.csv")
    with atomic_file(csv_path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "class", "probability", "top5"])
        for path, top in ranked:
            writer.writerow([path, top[0]["name"], f"{top[0]['prob']:.6f}", ";".join(p["name"] for p in top)])
    return json_path, csv_path
