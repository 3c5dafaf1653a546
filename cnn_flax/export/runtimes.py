"""An export folder opened with one runtime: uint8 images in, probabilities out, nothing else needed.

This is the backend of `--mode=predict --export_dir` and of the export benchmark: it reads only the
folder (export.json for the input shape and class names, the artifact of the chosen runtime, checked
against its sha256 first), never a config, checkpoint or dataset.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.export import manifest

RUNTIMES = ("jax", "saved_model", "onnx", "tflite")
# What the benchmark and messages call each runtime.
RUNTIME_NAMES = {"jax": "jax", "saved_model": "tf_saved_model", "onnx": "onnxruntime", "tflite": "tflite"}


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    directory: str
    runtime: str
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    probabilities: Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W, 3] -> float32 [N, C]
    manifest: dict[str, Any]  # the content of export.json


def open_export(directory: str, runtime: str = "jax") -> ExportedModel:
    if runtime not in RUNTIMES:
        raise UserError(f"--export_runtime={runtime!r} is not known; use one of {', '.join(RUNTIMES)}")
    facts = manifest.read_manifest(directory)
    if runtime not in facts.get("formats", {}):
        reason = facts.get("notes", {}).get(runtime, "it was not requested")
        raise UserError(f"{directory} has no {manifest.ARTIFACTS[runtime]} ({reason}); choose another "
                        f"--export_runtime among {', '.join(facts.get('formats', {}))}")
    name = manifest.ARTIFACTS[runtime]
    manifest.verify(directory, facts, name)
    path = os.path.join(directory, name)
    try:
        probabilities = _LOADERS[runtime](path)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - a runtime's own load failure, as one line
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"{path}: {RUNTIME_NAMES[runtime]} cannot load it ({first}); export the model again") \
            from None
    return ExportedModel(directory, runtime, tuple(facts["input_shape"]), tuple(facts["class_names"]),
                         _checked(probabilities, path, tuple(facts["input_shape"])), facts)


def _checked(probabilities: Callable[[np.ndarray], np.ndarray], path: str,
             shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    def call(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != shape:
            raise UserError(f"{path} takes uint8 images [N, {', '.join(map(str, shape))}], got {images.dtype} "
                            f"{list(images.shape)}")
        return np.asarray(probabilities(images), np.float32)
    return call


def _jax(path: str) -> Callable[[np.ndarray], np.ndarray]:
    from cnn_flax.export.jax_program import load_jax

    predict = load_jax(path)
    return lambda images: predict(images)["probabilities"]


def _saved_model(path: str) -> Callable[[np.ndarray], np.ndarray]:
    from cnn_flax.export.saved_model import SIGNATURE
    from cnn_flax.tensorflow_cpu import import_tensorflow

    tf = import_tensorflow()
    serve = tf.saved_model.load(path).signatures[SIGNATURE]
    return lambda images: serve(images=tf.constant(images))["probabilities"].numpy()


def _onnx(path: str) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime
    except ImportError:
        from cnn_flax.export.onnx import EXTRA_HINT

        raise UserError(f"{path} needs onnxruntime; {EXTRA_HINT}") from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda images: session.run(["probabilities"], {"images": images})[0]


# Where TensorFlow Lite's interpreter comes from, preferred first: LiteRT (the ai-edge-litert package, which
# TensorFlow's notes name as tf.lite.Interpreter's successor) when installed, else TensorFlow's own.
TFLITE_INTERPRETERS = ("litert", "tensorflow")


def litert_installed() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def tflite_interpreter_class(kind: str | None = None) -> type:
    """The Interpreter class of `kind` ("litert" or "tensorflow"); None: LiteRT where installed, else TensorFlow."""
    kind = kind or ("litert" if litert_installed() else "tensorflow")
    if kind == "litert":
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UserError("the LiteRT interpreter needs the ai-edge-litert package; pip install ai-edge-litert "
                            "(or 'cnn_flax[export]')") from None
        return Interpreter
    if kind == "tensorflow":
        from cnn_flax.tensorflow_cpu import import_tensorflow

        tf = import_tensorflow()
        with warnings.catch_warnings():  # tf.lite.Interpreter announces its move to ai_edge_litert when used
            warnings.simplefilter("ignore", UserWarning)
            return tf.lite.Interpreter
    raise UserError(f"TFLite interpreter {kind!r} is not known; use one of {', '.join(TFLITE_INTERPRETERS)}")


def load_tflite(path: str, kind: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """model.tflite's signature as uint8 images -> probabilities, run by the interpreter of `kind`."""
    from cnn_flax.console import native_stderr_silenced
    from cnn_flax.export.saved_model import SIGNATURE

    interpreter_class = tflite_interpreter_class(kind)
    with warnings.catch_warnings():  # TensorFlow's interpreter warns of its deprecation when constructed
        warnings.simplefilter("ignore", UserWarning)
        interpreter = interpreter_class(model_path=path)
    runner = interpreter.get_signature_runner(SIGNATURE)
    # The first call prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from native code: made
    # here, silenced, on zeros of the stored shape; later calls resize the batch as they need.
    (stored,) = interpreter.get_input_details()
    with native_stderr_silenced():
        runner(images=np.zeros(stored["shape"], np.uint8))
    return lambda images: runner(images=images)["probabilities"]


def _tflite(path: str) -> Callable[[np.ndarray], np.ndarray]:
    return load_tflite(path)


_LOADERS: dict[str, Callable[[str], Any]] = {"jax": _jax, "saved_model": _saved_model, "onnx": _onnx,
                                             "tflite": _tflite}
