"""Test-wide settings: eight fake CPU devices, fast XLA compiles, a compile cache; helpers live in tests/support/."""

import os

from xla_settings import xla_flags

os.environ.setdefault("XLA_FLAGS", xla_flags(8))  # eight CPU devices; XLA's faster-compiling emitters
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's plain float32 kernels: its oneDNN ones (bf16/AMX paths on recent CPUs) put Keras's own gradients
# 1e-3 to 1e-2 off the exact ones, too far for the tests that compare a Keras training step with ours.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("WANDB_MODE", "offline")
# The same for every process a test starts (launch.py, a benchmark's eval child, the notebook's kernel): XLA's
# unoptimized compiles, and the suite's compile cache.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".jax_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from cnn_flax.runtime import prefer_eigen_convolutions  # noqa: E402

prefer_eigen_convolutions()  # as launch.py does: fast kernel gradients on XLA's CPU backend

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_platforms", "cpu")

# Tests build the same small networks many times: keep compiled programs across tests and processes, every
# one of them (threshold 0): unoptimized compiles mostly take under a second, so at JAX's threshold each
# process a test starts compiled them all again. Measured on six end-to-end files: 205 s -> 183 s from an
# empty cache, 150 s with the cache filled.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])  # CACHE unless set
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


# Whole modules whose tests train, export or start processes end to end (seconds to minutes each): slow.
# `python -m pytest -m "not slow"` is the everyday loop; CI runs everything.
END_TO_END = {
    "bench/test_bench_entry_points.py", "bench/test_bench_model.py", "bench/test_bench_op_profile.py",
    "bench/test_bench_kernels.py", "bench/test_bench_peers.py", "bench/test_bench_precision.py",
    "bench/test_bench_table.py",
    "export/test_export.py", "export/test_hub_folder.py",
    "pretrained/test_keras2_checkpoints.py", "pretrained/test_keras_checkpoints.py",
    "pretrained/test_pretrained_keras.py", "pretrained/test_torchvision_weights.py",
    "run/test_experiments.py", "run/test_first_hour.py", "run/test_folder_run.py", "run/test_gradcam.py",
    "run/test_launch.py", "run/test_leftovers.py", "run/test_load_run.py", "run/test_lr_find.py",
    "run/test_multihost.py", "run/test_notebook.py", "run/test_precise_bn_use.py", "run/test_reliability.py",
    "run/test_soak.py", "run/test_tiny_imagenet_run.py", "run/test_train.py", "run/test_training_controls.py",
    "run/test_vgg16_finetune.py", "run/test_wandb.py",
}

# The files that take longest on a 2-core machine (pytest --durations), longest first.
LONGEST = (
    "run/test_multihost.py", "run/test_soak.py", "pretrained/test_torchvision_weights.py", "run/test_train.py",
    "run/test_leftovers.py", "run/test_short_recipe.py", "run/test_reliability.py", "run/test_gradcam.py",
    "export/test_export.py", "run/test_vgg16_finetune.py", "run/test_training_controls.py",
    "pretrained/test_keras_checkpoints.py", "run/test_lr_find.py", "run/test_launch.py",
)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if os.path.relpath(str(item.path), here) in END_TO_END:
            item.add_marker(pytest.mark.slow)
    # xdist hands out whole files in collection order: the longest first, so that the short ones fill the
    # end and no worker is left alone with a minute-long file while the other waits.
    def weight(indexed):
        index, item = indexed
        name = os.path.relpath(str(item.path), here)
        return (LONGEST.index(name) if name in LONGEST else len(LONGEST), name not in END_TO_END, index)

    items[:] = [item for _, item in sorted(enumerate(items), key=weight)]


@pytest.fixture(scope="module", autouse=True)
def _release_each_modules_programs():
    """After each test file: JAX's compiled programs and traces dropped, the heap trimmed. A worker that ran
    the whole suite otherwise held 6-8 GB by its end (every jitted step of every test stays cached); with
    this it stays near 2 GB. Programs a later file needs again come back from the persistent cache.

    What survives that collection (modules, TensorFlow's and JAX's own objects: over 500,000 once TensorFlow is
    in) is frozen out of the collector's sight, so that neither the next file's collection nor the automatic
    ones walk it again: unfrozen, every file's collection took half a second, a minute of the suite's CPU."""
    yield
    import gc

    from cnn_flax.runtime import release_freed_host_memory

    jax.clear_caches()
    gc.collect()
    gc.freeze()
    release_freed_host_memory()
