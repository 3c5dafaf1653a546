"""model.onnx: the inference function's probabilities as ONNX (jax2onnx), checked by onnxruntime.

Input `images` (uint8, dynamic batch), output `probabilities`. jax2onnx and onnxruntime are the
optional `[export]` extra: without them the other formats are still written. Every file is run once by
onnxruntime on sample images and compared with JAX before it is kept.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.export.function import InferenceFunction

# The newest opset that both jax2onnx and onnxruntime 1.2x fully support.
OPSET = 23
EXTRA_HINT = 'pip install -e ".[export]"'
# How far onnxruntime may differ from JAX on the check images before the file is refused.
CHECK_TOLERANCE = 1e-4


def onnx_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("jax2onnx", "onnxruntime", "onnx"))


class OnnxUnsupported(UserError):
    """The model uses a JAX operation ONNX (or jax2onnx) cannot express; the other formats are unaffected."""


def _unsupported_operation(error: Exception) -> str | None:
    match = re.search(r"primitive '([^']+)'", str(error))
    return match.group(1) if match else None


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """jax2onnx talks a lot: Flax plugins print debugging lines, it logs its settings on the root logger,
    and plugins for libraries this project does not use (dm_pix) fail to import with this JAX version,
    each with a logged traceback. None of it concerns the user; errors still propagate."""
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in ("jax2onnx", "onnx_ir")}
    root.setLevel(max(root.level, logging.WARNING))
    for name in saved[1]:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


# jax2onnx's plugin folders for the libraries an exported function is written in (see _load_plugins).
PLUGIN_LIBRARIES = ("jax", "flax")


def _load_plugins() -> None:
    """Import the JAX and Flax conversion plugins only.

    On its first conversion jax2onnx imports the plugins of every library it supports, and those of
    Equinox alone (which import Equinox) cost about 5 s of CPU; the exported function is plain JAX with
    Flax modules. Marking the registry as filled keeps jax2onnx from importing the rest. Should a future
    jax2onnx lay its plugins out differently, it falls back to importing them all, as before.
    """
    try:
        from jax2onnx.plugins import plugin_system
    except ImportError:
        return
    if getattr(plugin_system, "_already_imported_plugins", True) or not hasattr(plugin_system, "_import_tree"):
        return
    root = Path(plugin_system.__file__).parent
    if not all((root / library).is_dir() for library in PLUGIN_LIBRARIES):
        return
    for library in PLUGIN_LIBRARIES:
        plugin_system._import_tree(root / library, f"jax2onnx.plugins.{library}")
    plugin_system._already_imported_plugins = True


def export_onnx(function: InferenceFunction, path: str, check_images: np.ndarray) -> float:
    """Write `path`; returns the largest difference from JAX's probabilities on `check_images`."""
    import jax2onnx

    try:
        with _quiet_converter():
            _load_plugins()
            model = jax2onnx.to_onnx(function.bound_probabilities(), [function.image_spec("batch")],
                                     model_name="cnn_flax", opset=OPSET, input_names=["images"],
                                     output_names=["probabilities"])
    except NotImplementedError as error:
        operation = _unsupported_operation(error)
        if operation is None:
            raise
        raise OnnxUnsupported(f"model.onnx not written: ONNX (jax2onnx) cannot express the JAX operation "
                              f"{operation!r}; the other formats were written") from None
    serialized = model.SerializeToString()
    difference = check_onnx(serialized, function, check_images)
    with open(path, "wb") as handle:
        handle.write(serialized)
    return difference


def check_onnx(serialized: bytes, function: InferenceFunction, images: np.ndarray) -> float:
    import onnx
    import onnxruntime

    onnx.checker.check_model(onnx.load_model_from_string(serialized))
    session = onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], {"images": images})
    # The weights as arguments, not constants: XLA compiles a network with its weights folded in several
    # times slower (seconds for VGG), and the numbers are the same.
    expected = np.asarray(jax.jit(function.probabilities)(function.variables, images))
    difference = float(np.max(np.abs(got - expected)))
    if not difference <= CHECK_TOLERANCE:
        raise UserError(f"model.onnx not written: onnxruntime's probabilities differ from JAX's by {difference:.2g} "
                        f"(more than {CHECK_TOLERANCE}); report this model and jax2onnx's version")
    return difference
