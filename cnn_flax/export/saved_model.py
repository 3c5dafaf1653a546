"""saved_model/: the inference function as a TensorFlow SavedModel, built with orbax-export.

orbax-export converts the JAX function with jax2tf: the computation travels as StableHLO inside the
graph, lowered here for CPU, CUDA and TPU, and the weights become TensorFlow variables of the
SavedModel (not constants), as TensorFlow Serving expects. The signature `serving_default` takes
`images` (uint8 [N, H, W, 3], any N) and returns `probabilities` and `top5`.
"""

from __future__ import annotations

import re

from cnn_flax.console import native_stderr_silenced
from cnn_flax.errors import UserError
from cnn_flax.export.function import TOP_K, InferenceFunction
from cnn_flax.export.jax_program import PLATFORMS

SIGNATURE = "serving_default"


def export_saved_model(function: InferenceFunction, directory: str) -> None:
    """The probabilities come from JAX; the top-5 is TensorFlow's `top_k` on them (ties: lower index first,
    as in the other formats), which TensorFlow Lite can convert where it cannot convert a StableHLO sort."""
    from cnn_flax.tensorflow_cpu import import_tensorflow

    tf = import_tensorflow()  # before orbax-export imports it: kept off the GPUs
    from orbax.export import ExportManager, JaxModule, ServingConfig

    height, width, channels = function.input_shape
    module = JaxModule(function.variables, function.probabilities, trainable=False,
                       input_polymorphic_shape=f"(batch, {height}, {width}, {channels})",
                       jax2tf_kwargs={"native_serialization_platforms": PLATFORMS})
    signature = [tf.TensorSpec([None, height, width, channels], tf.uint8, name="images")]
    k = min(TOP_K, function.num_classes)

    def outputs(probabilities: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": probabilities, "top5": tf.math.top_k(probabilities, k=k).indices}

    ExportManager(module, [ServingConfig(SIGNATURE, input_signature=signature, tf_postprocessor=outputs)]).save(
        directory)


class TfliteUnsupported(UserError):
    """TensorFlow Lite's converter refused the SavedModel; the other formats are unaffected."""


def convert_to_tflite(saved_model_dir: str, path: str) -> None:
    """model.tflite from the SavedModel (TensorFlow's converter, float32, TensorFlow ops where needed).

    The converter reads the StableHLO inside the SavedModel and covers only part of it: no sort (hence
    the top-5 in TensorFlow, see `export_saved_model`) and no gather with a symbolic batch dimension
    (hence `flip` for Keras's RGB→BGR, see `caffe_preprocess`); every architecture of the zoo converts.
    The model keeps the batch dimension symbolic: `tf.lite.Interpreter` resizes it to the batch given.
    Its native code prints a diagnostic per operation, which is kept out of the terminal and cut to its
    first error.
    """
    from cnn_flax.tensorflow_cpu import import_tensorflow

    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    try:
        with native_stderr_silenced():
            flatbuffer = converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter raises many types, all meaning "cannot convert"
        found = re.search(r"error: (.*?)(\n|$)", str(error))
        reason = found.group(1) if found else (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TfliteUnsupported(f"model.tflite not written: TensorFlow Lite cannot convert this model ({reason}); "
                                "the other formats were written (or set --config.export.tflite=False)") from None
    with open(path, "wb") as handle:
        handle.write(flatbuffer)
