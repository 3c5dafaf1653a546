"""Test-wide settings: eight fake CPU devices, fast XLA compiles, a compile cache; helpers live in tests/support/."""

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

jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_platforms", "cpu")

# Tests build the same small networks many times: keep compiled programs across tests and processes.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
