"""torchvision's VGGs with random weights, written and run in a process of their own.

    python tests/support/torchvision_reference.py SPECS.json

torchvision imports triton, whose native start-up crashes a process that has already loaded TensorFlow;
the test processes load it (export, data), so every torchvision network is built here instead, from a
JSON list of specs, each {"kind": "features" | "full" | "classifier", "variant": "A", "seed": 0,
"batch_norm": false, "weights": PATH, "layout": "zip" | "legacy" | "timm", "images": NPY or null,
"outputs": NPY}. For each it saves the network's state dict in the layout asked for and, given images
(NHWC float32), the network's outputs (NHWC feature maps, or logits). Nothing of cnn_flax, JAX or
TensorFlow is imported.
"""

import json
import sys

import numpy as np
import torch
from torchvision.models import vgg as tv_vgg

FULL = {"A": tv_vgg.vgg11, "B": tv_vgg.vgg13, "D": tv_vgg.vgg16, "E": tv_vgg.vgg19}


def network(spec: dict) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(spec["seed"])
    if spec["kind"] == "full":
        model = FULL[spec["variant"]]()
        return model, model.state_dict()
    features = tv_vgg.make_layers(tv_vgg.cfgs[spec["variant"]], batch_norm=spec.get("batch_norm", False))
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    if spec["kind"] == "features":
        return features, state
    # "classifier": torchvision's classifier for the 1x1 maps a 32x32 image leaves (the same reordering as 7x7)
    classifier = torch.nn.Sequential(torch.nn.Linear(512, 4096), torch.nn.ReLU(), torch.nn.Dropout(),
                                     torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Dropout(),
                                     torch.nn.Linear(4096, 1000))
    state.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    return torch.nn.Sequential(features, torch.nn.Flatten(), classifier), state


def timm_layout(state: dict) -> dict:
    """timm's `vgg*.tv_in1k` Hub files: torchvision's numbers with the classifier as 7x7 and 1x1 convolutions."""
    renamed = {}
    for name, value in state.items():
        value = value.numpy()
        if name.startswith("classifier.0."):
            name = name.replace("classifier.0", "pre_logits.fc1")
            value = value.reshape(value.shape[0], *((512, 7, 7) if value.ndim == 2 else ()))
        elif name.startswith("classifier.3."):
            name = name.replace("classifier.3", "pre_logits.fc2")
            value = value.reshape(value.shape[0], *((4096, 1, 1) if value.ndim == 2 else ()))
        elif name.startswith("classifier.6."):
            name = name.replace("classifier.6", "head.fc")
        renamed[name] = np.ascontiguousarray(value)
    return renamed


def main(spec_path: str) -> None:
    with open(spec_path) as handle:
        specs = json.load(handle)
    for spec in specs:  # one start of torch for many networks
        write_reference(spec)


def write_reference(spec: dict) -> None:
    model, state = network(spec)
    if spec["layout"] == "timm":
        from safetensors.numpy import save_file

        save_file(timm_layout(state), spec["weights"])
    else:
        torch.save(state, spec["weights"], _use_new_zipfile_serialization=spec["layout"] == "zip")
    if spec.get("images"):
        images = np.load(spec["images"])
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
        np.save(spec["outputs"], out.transpose(0, 2, 3, 1) if out.ndim == 4 else out)


if __name__ == "__main__":
    main(sys.argv[1])
