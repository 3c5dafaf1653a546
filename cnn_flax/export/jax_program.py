"""model.jax: the inference function as a serialized `jax.export` program (StableHLO, weights inside).

It is lowered once for CPU, CUDA and TPU with a symbolic batch dimension, so one file runs on any of
them at any batch size, and loading it needs JAX alone: no Flax, no model code, no cnn_flax.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np
from jax import export

from cnn_flax.errors import UserError
from cnn_flax.export.function import InferenceFunction

PLATFORMS = ("cpu", "cuda", "tpu")


def export_jax_program(function: InferenceFunction, path: str) -> None:
    """Serialize `function.outputs` (a dict of probabilities and top5) with the weights as constants."""
    (batch,) = export.symbolic_shape("batch")
    exported = export.export(jax.jit(function.bound_outputs()), platforms=PLATFORMS)(function.image_spec(batch))
    with open(path, "wb") as handle:
        handle.write(exported.serialize())


def load_jax(path: str | os.PathLike) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """`predict(images)`: uint8 [N, H, W, 3] → {'probabilities': [N, C] float32, 'top5': [N, k] int32}."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            exported = export.deserialize(bytearray(handle.read()))
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror}); give the model.jax of an export folder") from None
    except Exception as error:  # noqa: BLE001 - any parse failure means the same to the user
        raise UserError(f"{path}: not a serialized jax.export program ({type(error).__name__}); export the "
                        "model again") from None
    call = jax.jit(exported.call)
    expected = exported.in_avals[0]

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != expected.shape[1:]:
            raise UserError(f"{path} takes uint8 images of shape [N, {', '.join(map(str, expected.shape[1:]))}], "
                            f"got {images.dtype} {list(images.shape)}")
        return {name: np.asarray(value) for name, value in call(images).items()}

    return predict
