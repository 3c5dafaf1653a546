"""The deck's models as plain tables for the Keras and PyTorch peers, read from cnn_flax.models' own source.

Importing cnn_flax.models would load Flax and JAX into a peer's process and its memory, so the tables
(MiniGoogLeNet's modules, DeeperGoogLeNet's inception rows, MiniVGG's stages) are read from the models'
files as literals (`ast.literal_eval`: nothing in them runs). Our models and the peers thus share one
table each; the tests also compare each peer's parameter count with ours.
"""

import ast
import dataclasses
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def model_constant(module: str, name: str) -> Any:
    """The literal value of the top-level constant `name` of cnn_flax/models/<module>.py."""
    tree = ast.parse((MODELS_DIR / f"{module}.py").read_text(encoding="utf-8"))
    for node in tree.body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"cnn_flax/models/{module}.py has no constant {name}")


# MiniGoogLeNet (Zhang et al.): a conv_module of 96, then ('inc', #1x1, #3x3) and ('down', #3x3) modules.
MINI_GOOGLENET: tuple[tuple[Any, ...], ...] = model_constant("googlenet", "MINI_GOOGLENET")
# DeeperGoogLeNet's inception modules, stages 3 and 4: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
INCEPTION: dict[str, tuple[int, ...]] = {name: row for name, row in model_constant("googlenet", "INCEPTION").items()
                                         if name[0] in "34"}
MINIVGG_STAGES: tuple[int, ...] = model_constant("minivgg", "STAGES")
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3  # Keras's defaults, as ours


@dataclasses.dataclass(frozen=True)
class Deck:
    """A model with the input, optimizer and parameter count of its config (configs/<config>.py)."""

    image_size: int
    classes: int
    learning_rate: float
    momentum: float
    nesterov: bool
    l2: float  # Keras's l2() on every kernel, as optimizer.l2
    params: int  # Keras's count: weights, biases and BatchNorm's moving statistics


MODELS = {
    "minivgg": Deck(32, 10, 0.01, 0.9, True, 0.0, 2_171_178),  # configs/minivgg_cifar10.py
    "minigooglenet": Deck(32, 10, 5e-3, 0.9, False, 0.0, 1_656_250),  # configs/minigooglenet_cifar10.py
    "deepergooglenet": Deck(64, 200, 1e-3, 0.9, False, 2e-4, 3_667_976),  # configs/deeper_sgd_baseline.py
}
