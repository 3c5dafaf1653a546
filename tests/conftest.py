"""Test-wide settings (eight fake CPU devices, fast XLA compiles) and the helpers several test files share."""

import contextlib
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's plain float32 kernels: its oneDNN ones (bf16/AMX paths on recent CPUs) put Keras's own gradients
# 1e-3 to 1e-2 off the exact ones, too far for the tests that compare a Keras training step with ours.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("WANDB_MODE", "offline")

from cnn_flax.runtime import prefer_eigen_convolutions  # noqa: E402

prefer_eigen_convolutions()  # as launch.py does: fast kernel gradients on XLA's CPU backend

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_platforms", "cpu")

# Tests build the same small networks many times: keep compiled programs across tests and processes.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@contextlib.contextmanager
def optimized_compiles():
    """XLA's optimizing compiles for steps that run convolutions inside a loop (gradient accumulation's
    `lax.scan`): without optimizations XLA:CPU runs those ~10x slower, far more than the compile saves."""
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", True)


def tiny_config(**overrides):
    """The quickstart at 16x16 with a few steps per epoch: seconds per epoch on a CPU.

    `overrides` are dotted config keys, e.g. `tiny_config(num_epochs=2, **{"model.bn_order": "conv_bn_act"})`.
    """
    from configs import quickstart

    config = quickstart.get_config()
    config.data.image_size = 16
    config.batch_size = 32
    config.steps_per_epoch = 4
    config.eval_steps = 2
    config.log_every_steps = 2
    config.checkpoint_every_epochs = 1
    return with_overrides(config, overrides)


def with_overrides(config, overrides):
    """`config` with dotted keys set, e.g. {"optimizer.name": "adam"}; returned for chaining."""
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return config


# A small tiny-imagenet-200 folder, laid out as the official download.
WNIDS = ["n01443537", "n01629819", "n02124075"]
TINY_IMAGENET_NAMES = ["goldfish", "European fire salamander", "Egyptian cat"]
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 12, 2, 2
GREY = ("train", 1, 3)  # (split, class, k) of the one grayscale JPEG


def write_tiny_imagenet_root(root: str) -> None:
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "val", "images"))
    with open(os.path.join(root, "wnids.txt"), "w") as f:
        f.write("\n".join(WNIDS) + "\n")
    with open(os.path.join(root, "words.txt"), "w") as f:
        f.write("n00001740\tentity\n")
        f.write("".join(f"{w}\t{n}, other name\n" for w, n in zip(WNIDS, TINY_IMAGENET_NAMES, strict=True)))
    annotations = []
    for c, wnid in enumerate(WNIDS):
        folder = os.path.join(root, "train", wnid, "images")
        os.makedirs(folder)
        for k in range(TRAIN_PER_CLASS):
            grey = ("train", c, k) == GREY
            pixels = rng.integers(0, 256, (64, 64) if grey else (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{wnid}_{k}.JPEG"))
        for k in range(VAL_PER_CLASS):
            name = f"val_{c * VAL_PER_CLASS + k}.JPEG"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                os.path.join(root, "val", "images", name)
            )
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
        f.write("".join(annotations[::-1]))
