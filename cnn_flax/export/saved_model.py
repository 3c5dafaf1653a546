"""saved_model/: the inference function as a TensorFlow SavedModel, built with orbax-export.

orbax-export converts the JAX function with jax2tf: the computation travels as StableHLO inside the
graph, lowered here for CPU, CUDA and TPU, and the weights become TensorFlow variables of the
SavedModel (not constants), as TensorFlow Serving expects. The signature `serving_default` takes
`images` (uint8 [N, H, W, 3], any N) and returns `probabilities` and `top5`.
"""

from __future__ import annotations

import os

from cnn_flax.errors import UserError
from cnn_flax.export.function import TOP_K, InferenceFunction
from cnn_flax.export.jax_program import PLATFORMS

SIGNATURE = "serving_default"


def export_saved_model(function: InferenceFunction, directory: str) -> None:
    """The probabilities come from JAX; the top-5 is TensorFlow's `top_k` on them (ties: lower index first,
    as in the other formats), which TensorFlow Lite can convert where it cannot convert a StableHLO sort."""
    import tensorflow as tf
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


def convert_to_tflite(saved_model_dir: str, path: str) -> None:
    """model.tflite from the SavedModel (TensorFlow's converter, float32, TensorFlow ops where needed)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter raises many types, all meaning "cannot convert"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{os.path.basename(path)}: TensorFlow Lite cannot convert the SavedModel ({first}); "
                        "set --config.export.tflite=False") from None
    with open(path, "wb") as handle:
        handle.write(flatbuffer)
