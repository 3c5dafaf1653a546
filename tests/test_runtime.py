"""Process-wide settings launch.py applies: explicit, and the user's own choices win."""

import os

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
