"""The Hugging Face side of an export folder: model.safetensors, config.json and a model card README.md.

With these three beside the other formats, the export folder is a Hub model repository as it stands
(`huggingface_hub.upload_folder` or `hf upload user/name FOLDER .`), and `init_from=hf://user/name` reads
it back. model.safetensors holds every array of the run's variables (parameters and BatchNorm statistics,
auxiliary heads included), keys named as `--mode=summary` names the layers; config.json what is needed to
rebuild the model and feed it; README.md what a reader of the Hub page needs to judge the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from cnn_flax.pretrained.safetensors_io import SAFETENSORS_FILE, flatten_variables, save_variables

CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
NORMALIZATION_WORDS = {
    "scale": "RGB divided by 255",
    "mean_image": "RGB (0-255) minus the training set's mean image (a constant inside model.jax, saved_model/ "
                  "and model.onnx)",
    "mean_rgb": "RGB (0-255) minus the training set's mean colour `mean_rgb`",
    "caffe": "Keras's 'caffe': RGB to BGR, minus the ImageNet BGR means (103.939, 116.779, 123.68), no scaling",
    "torchvision": "RGB divided by 255, minus (0.485, 0.456, 0.406), divided by (0.229, 0.224, 0.225)",
    "none": "raw RGB values 0-255 as float",
}


def hub_config(facts: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """config.json: the model's options, its input, its normalisation and the class names (id2label)."""
    return {"library_name": "cnn_flax", "model": dict(facts["model"]),
            "input_shape": list(facts["input_shape"]), "num_classes": len(class_names),
            "normalization": dict(facts["normalization"]), "image_decoding": dict(facts.get("image_decoding", {})),
            "id2label": {str(i): name for i, name in enumerate(class_names)},
            "weights": SAFETENSORS_FILE, "weight_keys": "collection/layer/.../leaf, as --mode=summary names layers"}


def write_hub_files(directory: str, variables: Mapping[str, Any], facts: Mapping[str, Any],
                    class_names: Sequence[str]) -> None:
    """model.safetensors, config.json and README.md into `directory` (an export folder being built)."""
    metadata = {"cnn_flax.model": json.dumps(dict(facts["model"]), sort_keys=True),
                "cnn_flax.input_shape": json.dumps(list(facts["input_shape"]))}
    save_variables(os.path.join(directory, SAFETENSORS_FILE), variables, metadata)
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump(hub_config(facts, class_names), handle, indent=2)
        handle.write("\n")
    with open(os.path.join(directory, CARD_FILE), "w", encoding="utf-8") as handle:
        handle.write(model_card(variables, facts, class_names))


def _count(variables: Mapping[str, Any]) -> tuple[int, int]:
    flat = flatten_variables(variables)
    total = sum(int(a.size) for a in flat.values())
    return total, sum(int(a.size) for k, a in flat.items() if k.startswith("params/"))


def model_card(variables: Mapping[str, Any], facts: Mapping[str, Any], class_names: Sequence[str]) -> str:
    """The README.md of the model repository: YAML front matter for the Hub, then the facts in prose and tables."""
    model = dict(facts["model"])
    name = facts.get("config") or model.get("name", "model")
    total, trainable = _count(variables)
    shape = "x".join(str(v) for v in facts["input_shape"])
    method = facts["normalization"].get("method", "scale")
    dataset = facts.get("dataset") or "unknown"
    metrics = facts.get("metrics") or {}
    command = facts.get("command")
    source = facts.get("source") or {}
    lines = ["---", "library_name: cnn_flax", "pipeline_tag: image-classification",
             "tags:", "- jax", "- flax", "- image-classification", "- cnn_flax", "---", "",
             f"# {name}", "",
             f"A {model.get('name', 'model')} image classifier trained with cnn_flax (JAX/Flax), exported by "
             "`--mode=export`.", "",
             "## Architecture", "",
             "| option | value |", "|---|---|",
             *[f"| {key} | `{value}` |" for key, value in sorted(model.items())],
             "", f"Parameters: {total:,} in all, {trainable:,} trainable"
             + (" (BatchNorm statistics are the rest)." if total != trainable else "."), "",
             "## Data", "",
             f"Dataset `{dataset}`, {len(class_names)} classes: "
             + ", ".join(str(n) for n in class_names[:20]) + (" ..." if len(class_names) > 20 else "") + ".", "",
             "## Results of the run", ""]
    if metrics:
        lines += ["| split | examples | rank-1 | rank-5 | loss |", "|---|---|---|---|---|",
                  f"| {metrics.get('split', '?')} | {metrics.get('num_examples', '?')} | "
                  f"{_number(metrics.get('rank1'))} | {_number(metrics.get('rank5'))} | "
                  f"{_number(metrics.get('loss'))} |",
                  ""]
    else:
        lines += ["The run left no metrics.json (it was not evaluated); no accuracy is claimed.", ""]
    lines += [f"Weights: {_source_words(source)}.", "", "## How it was trained", ""]
    lines += ([f"```\n{command}\n```", ""] if command else
              ["Started from Python, not launch.py; the run's config is in config.json of its workdir.", ""])
    lines += ["## Input", "",
              f"uint8 RGB images `[N, {', '.join(map(str, facts['input_shape']))}]` ({shape}); the files here "
              f"include the normalisation: {NORMALIZATION_WORDS.get(method, method)}. `model.safetensors` holds "
              "the Flax variables without it: normalise yourself when you apply the model to those.", "",
              "## Files", "",
              "- `model.safetensors`: every array of the run's variables, keys `collection/layer/.../leaf`",
              "- `config.json`: model options, input shape, normalisation, class names (`id2label`)",
              "- `export.json`, `labels.txt`: the export's manifest (sha256 of every file) and class names",
              "- `model.jax`, `saved_model/`, `model.onnx` (when written): the model with its preprocessing, "
              "uint8 images in, probabilities out", "",
              "## Use", "",
              "With cnn_flax, the training command above plus `--mode=predict --images=photo.jpg "
              "--config.init_from=hf://USER/NAME` (this repository) classifies photos; "
              "`--config.init_from=hf://USER/NAME` alone starts a new run from these weights. Without cnn_flax, "
              "`model.onnx` or `saved_model/` take uint8 images and give probabilities.", "",
              "## Intended use and limitations", "",
              "For research and teaching: the architectures of the 'CNN Architectures II' lecture, reproduced "
              f"and trained as recorded above. The model knows only the {len(class_names)} classes of "
              f"`{dataset}` and images like its training images ({shape} pixels, prepared as described); "
              "accuracy on other images is unmeasured. It was not evaluated for fairness, robustness or safety "
              "and must not be used for decisions about people.", ""]
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "?"


def _source_words(source: Mapping[str, Any]) -> str:
    if "epoch" in source:
        words = f"the checkpoint of epoch {source['epoch']}"
        return words + (" (moving average of the weights)" if source.get("weights") else "")
    if "init_from" in source:
        return f"taken unchanged from `{os.path.basename(str(source['init_from']))}` (init_from)"
    return "as exported"
