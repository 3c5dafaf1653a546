"""Run exported artifacts as a user of the export folder would, in a process that never imports cnn_flax.

    python tests/support/export_artifacts_check.py SPEC.json

SPEC.json lists cases {"name", "dir", "images" (.npy, uint8 [N, H, W, 3]), "expected" (.npy, the Flax
model's float32 probabilities for those images), "batches"}. For each runtime whose artifact the folder
holds, the images go through in each batch size; printed (JSON): per case and runtime, the largest
difference from the expected probabilities, whether the top-5 agree and the seconds it took (loading and
compiling included), and for TFLite the input's stored shape and the interpreter that read it. Only
TensorFlow, LiteRT's TFLite interpreter (TensorFlow's where ai-edge-litert is not installed), onnxruntime
and JAX are used, as docs/export.md shows; the last line checks that neither cnn_flax nor Flax was loaded.
"""

import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def top5(probabilities: np.ndarray) -> np.ndarray:
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :min(5, probabilities.shape[1])]


def jax_runner(folder: str):
    import jax

    with open(os.path.join(folder, "model.jax"), "rb") as handle:
        exported = jax.export.deserialize(bytearray(handle.read()))
    return lambda images: {k: np.asarray(v) for k, v in exported.call(images).items()}


def saved_model_runner(folder: str):
    import tensorflow as tf

    serve = tf.saved_model.load(os.path.join(folder, "saved_model")).signatures["serving_default"]
    return lambda images: {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}


def onnx_runner(folder: str):
    import onnxruntime

    session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda images: {"probabilities": session.run(["probabilities"], {"images": images})[0]}


def tflite_interpreter():
    """LiteRT's interpreter (the ai-edge-litert package) where installed, else TensorFlow's, as the README says."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806 - a class
    return Interpreter


def tflite_runner(folder: str):
    """The signature runner resizes the input to each batch given (Interpreter.resize_tensor_input)."""
    runner = tflite_interpreter()(model_path=os.path.join(folder, "model.tflite")).get_signature_runner(
        "serving_default")
    return lambda images: runner(images=images)


def tflite_input(folder: str) -> dict:
    """The input's stored shape and its shape signature (-1: a dimension resizable at run time), and which
    interpreter read it."""
    interpreter = tflite_interpreter()
    (detail,) = interpreter(model_path=os.path.join(folder, "model.tflite")).get_input_details()
    return {"shape": detail["shape"].tolist(), "shape_signature": detail["shape_signature"].tolist(),
            "interpreter": interpreter.__module__.split(".")[0]}


RUNNERS = {"jax": jax_runner, "saved_model": saved_model_runner, "onnx": onnx_runner, "tflite": tflite_runner}


def check(case: dict) -> dict:
    with open(os.path.join(case["dir"], "export.json")) as handle:
        formats = json.load(handle)["formats"]
    images, expected = np.load(case["images"]), np.load(case["expected"])
    results = {}
    for runtime in (r for r in RUNNERS if r in formats):
        began = time.perf_counter()
        run = RUNNERS[runtime](case["dir"])
        worst, same_top5, outputs = 0.0, True, set()
        for batch in case["batches"]:
            for start in range(0, len(images), batch):
                got = run(images[start:start + batch])
                want = expected[start:start + batch]
                outputs |= set(got)
                worst = max(worst, float(np.max(np.abs(got["probabilities"] - want))))
                same_top5 &= bool(np.array_equal(top5(got["probabilities"]), top5(want)))
                if "top5" in got:
                    same_top5 &= bool(np.array_equal(got["top5"], top5(want)))
                same_top5 &= got["probabilities"].dtype == np.float32
        results[runtime] = {"max_abs_difference": worst, "same_top5": same_top5, "outputs": sorted(outputs),
                            "seconds": round(time.perf_counter() - began, 2)}
    if "tflite" in results:
        results["tflite"]["input"] = tflite_input(case["dir"])
    return results


def main(spec_path: str) -> None:
    with open(spec_path) as handle:
        cases = json.load(handle)
    report = {case["name"]: check(case) for case in cases}
    report["modules_loaded"] = sorted(m for m in ("cnn_flax", "flax") if m in sys.modules)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
