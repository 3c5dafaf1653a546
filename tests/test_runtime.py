"""Process-wide settings launch.py applies: explicit, and the user's own choices win."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from cnn_flax.models import _compiled_init, create_model, init_variables
from cnn_flax.runtime import keep_freed_host_memory, prefer_eigen_convolutions, tune_cpu, use_compile_cache


def test_runtime_tuning_is_explicit_and_respects_the_users_choices(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert prefer_eigen_convolutions() is True  # this jaxlib knows the flag (launch.py would abort otherwise)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=default")
    assert prefer_eigen_convolutions() is False  # the user chose: left alone
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=default"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert keep_freed_host_memory() is False
    monkeypatch.setenv("CNN_FLAX_CPU_TUNING", "0")
    assert tune_cpu() == []


def test_compile_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        assert use_compile_cache() == str(tmp_path / "cnn_flax" / "jax")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cnn_flax" / "jax")
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
        assert use_compile_cache() == ""  # switched off by the user: JAX reads the variable itself
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_initialisation_compiles_once_per_model_and_shape():
    first = create_model(dict(name="minivgg", num_classes=10), jnp.float32)
    again = create_model(dict(name="minivgg", num_classes=10), jnp.float32)  # equal, not the same object
    a = init_variables(first, jax.random.key(0), (16, 16, 3))
    compiled = _compiled_init.cache_info().misses  # other tests may have compiled this one already
    b = init_variables(again, jax.random.key(0), [16, 16, 3])
    assert _compiled_init.cache_info().misses == compiled
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x, y: bool((x == y).all()), a, b))


def test_released_host_memory_leaves_the_process():
    """With the allocator keeping freed memory, a freed 300 MB block stays resident until it is released."""
    probe = ("from cnn_flax.runtime import keep_freed_host_memory, release_freed_host_memory\n"
             "from cnn_flax.bench.cli import rss_mb\n"
             "assert keep_freed_host_memory()\n"
             "block = bytearray(300 * 2**20); before = rss_mb(); del block; kept = rss_mb()\n"
             "assert release_freed_host_memory()\n"
             "print(round(before), round(kept), round(rss_mb()))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    before, kept, released = map(int, subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                                     env=env, check=True).stdout.split())
    assert kept > before - 10 and released < kept - 250
