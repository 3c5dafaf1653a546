"""Classifying image files: the one path from files to ranked classes that every kind of model uses.

A model is reduced to `probabilities(uint8 batch) -> [N, C]` (our Flax models through
`model_probabilities`; anything else that maps images to class probabilities fits too), and images to
`load(path) -> uint8 [H, W, 3]`. `classify` then decodes a batch at a time in threads, pads the last batch
so the model compiles once, and ranks the classes; files that cannot be read are returned with the
reason instead of stopping a run over thousands of photos. `write_predictions` leaves
predictions.json (every image's top five) and predictions.csv (one row per image, for a spreadsheet).

Keras's ImageNet VGG weights go through the same path with Keras's resizing and 'caffe' preprocessing
(`classify_images`), so our top-5 equals Keras's for the same files; an export folder is one more
`probabilities` function (`predict_from_export`), decoding files as the run did (recorded in export.json).
"""

from __future__ import annotations

import concurrent.futures
import csv
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnn_flax.atomic import atomic_file, write_json
from cnn_flax.errors import UserError
from cnn_flax.pretrained.images import caffe_preprocess, load_images

EXPORT_BATCH = 64

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
            # the index alone where the name is only the index again (digits, numbered folders): "3", not "3 3"
            same = str(entry["name"]) == str(entry["index"])
            cls = f"{entry['index']:>4}" if same else f"{entry['index']:>4} {entry['name']}"
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


def image_files(paths: Sequence[str]) -> list[str]:
    """The image files named by `--images` (files, and every image under folders), or a one-line error."""
    from cnn_flax.data.sources.folder_scan import image_files as files_under

    if not paths:
        raise UserError("--mode=predict needs --images=a.jpg,photos/ (image files, or folders of them)")
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise UserError(f"--images: {missing[0]} not found; give image files or folders")
    files = files_under(list(paths))
    if not files:
        raise UserError(f"--images={','.join(paths)}: no image files there (.jpg .jpeg .png .bmp .gif .webp)")
    return files


def image_decoding(data_config: Any) -> dict[str, Any]:
    """How a run decodes a file for prediction: as prepare did for folder data, else as Keras's load_img.

    Recorded in an export's export.json, so predicting from the export decodes exactly as the run did.
    """
    if data_config.name == "folder":
        return {"kind": "folder", "resize": data_config.resize}
    return {"kind": "keras_load_img", "interpolation": "nearest"}


def image_loader(decoding: Mapping[str, Any], size: tuple[int, int]) -> Loader:
    """`load(path)` for a decoding described by `image_decoding`."""
    if decoding.get("kind") == "folder":
        from cnn_flax.data.sources.images import load_square

        return lambda path: load_square(path, size[0], decoding["resize"])
    return keras_loader(size, decoding.get("interpolation", "nearest"))


def keras_loader(size: tuple[int, int], interpolation: str = "nearest") -> Loader:
    """`load(path)` resizing as keras.utils.load_img(target_size=size) does."""
    return lambda path: load_images([path], size, interpolation)[0]


def classify_images(model: Any, variables: Mapping[str, Any], paths: Sequence[str | os.PathLike],
                    size: tuple[int, int], class_names: Sequence[str], k: int = 5,
                    batch_size: int = 16) -> list[list[Prediction]]:
    """Keras's ImageNet models: load, resize to `size` = (height, width), caffe-preprocess, rank the softmax."""
    ranked, skipped = classify(model_probabilities(model, variables, caffe_preprocess), paths, keras_loader(size),
                               class_names, k=k, batch_size=batch_size)
    if skipped:
        raise UserError(skipped[0][1])
    return [top for _, top in ranked]


def predict_from_export(export_dir: str, paths: list[str], workdir: str | None = None,
                        runtime: str = "jax") -> list[dict[str, Any]]:
    """`--mode=predict --export_dir=DIR`: the export folder alone; results go beside it by default."""
    from cnn_flax.export.runtimes import open_export

    files = image_files(paths)
    model = open_export(export_dir, runtime)
    load = image_loader(model.manifest.get("image_decoding", {}), model.input_shape[:2])
    workdir = workdir or os.path.dirname(os.path.abspath(export_dir))
    return predict_files(model.probabilities, files, load, model.class_names, workdir, batch_size=EXPORT_BATCH)


def predict_files(probabilities: Probabilities, files: Sequence[str], load: Loader, class_names: Sequence[str],
                  workdir: str, *, batch_size: int = 64, write: bool = True) -> list[dict[str, Any]]:
    """`classify`, then what a user sees: skipped files as warnings, the files written, the table printed."""
    ranked, skipped = classify(probabilities, files, load, class_names, batch_size=batch_size)
    log = logging.getLogger("cnn_flax")
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    if not ranked:
        raise UserError(f"none of the {len(files)} files could be read (first: {skipped[0][0]}: {skipped[0][1]})")
    if write:
        json_path, csv_path = write_predictions(workdir, ranked)
        log.info("predictions of %d images in %s and %s", len(ranked), json_path, csv_path)
    if len(ranked) <= 20:
        print(format_predictions([p for p, _ in ranked], [t for _, t in ranked]))
    else:
        print(f"{len(ranked)} images classified ({len(skipped)} unreadable); predictions.json and predictions.csv "
              f"in {workdir}")
    return [dict(image=path, top5=list(top)) for path, top in ranked]


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
