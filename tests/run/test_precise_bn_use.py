"""precise_bn_batches reaches every use of the weights: predict and export agree, and both differ without it."""

import os

import numpy as np
from PIL import Image
from run_configs import tiny_config, with_overrides

from cnn_flax.export import load_jax
from cnn_flax.run import modes
from cnn_flax.run.export import export_run
from cnn_flax.run.train import train_and_evaluate


def _top1(predictions):
    return np.array([p["top5"][0]["prob"] for p in predictions])


def test_predict_and_export_use_the_recomputed_statistics(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_config(num_epochs=2, steps_per_epoch=2, eval_steps=1, **{"export.onnx": "no"})
    train_and_evaluate(config, workdir)
    precise = with_overrides(config.copy_and_resolve_references(), {"precise_bn_batches": 3})
    images = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"image_{i}.png"))
        Image.fromarray(image).save(paths[-1])
    recomputed = modes.predict(precise, workdir, paths, checkpoint="best")
    running = modes.predict(config, workdir, paths, checkpoint="best")
    assert not np.allclose(_top1(recomputed), _top1(running), rtol=1e-3)
    manifest = export_run(precise, workdir, "best")
    assert manifest["source"]["batch_norm_statistics"] == "recomputed over 3 training batches"
    assert manifest["source"]["epoch"] in (1, 2)
    exported = load_jax(os.path.join(workdir, "export", "model.jax"))(images)["probabilities"]
    np.testing.assert_allclose(exported.max(axis=1), _top1(recomputed), rtol=1e-4, atol=1e-6)
