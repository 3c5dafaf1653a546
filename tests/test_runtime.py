"""Process-wide settings launch.py applies: explicit, and the user's own choices win."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from cnn_flax.models import compiled_init, create_model, init_variables
from cnn_flax.runtime import (
    keep_freed_host_memory,
    prefer_eigen_convolutions,
    run_cpu_steps_inline,
    tune_cpu,
    use_compile_cache,
)


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
    compiled = compiled_init.cache_info().misses  # other tests may have compiled this one already
    b = init_variables(again, jax.random.key(0), [16, 16, 3])
    assert compiled_init.cache_info().misses == compiled
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


def test_cpu_steps_run_inline_so_a_steps_temporaries_are_freed_when_it_returns():
    """With async dispatch XLA frees a step's temporaries on its worker thread after the result is ready, so
    the next step could take a second block meanwhile; run inline, they are freed before the call returns."""
    probe = (
        "import ctypes\n"
        "from cnn_flax.runtime import tune_cpu\n"
        "assert 'run_cpu_steps_inline' in tune_cpu()\n"
        "import jax, jax.numpy as jnp\n"
        "assert jax.config.read('jax_cpu_enable_async_dispatch') is False\n"
        "class Info(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',\n"
        "                                               'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.mallinfo2.restype = Info\n"
        "f = jax.jit(lambda x: (jnp.cos(jnp.sin(x) @ x) @ x).sum())\n"
        "x = jnp.full((1024, 1024), 1e-3)\n"
        "print(f.lower(x).compile().memory_analysis().temp_size_in_bytes)\n"
        "f(x).block_until_ready()\n"
        "for _ in range(8):\n"
        "    before = libc.mallinfo2().uordblks; f(x).block_until_ready()\n"
        "    print(libc.mallinfo2().uordblks - before)\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("JAX_CPU_ENABLE_ASYNC_DISPATCH", "CNN_FLAX_CPU_TUNING")}
    temp, *held = map(int, subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                                          check=True).stdout.split())
    assert temp >= 8 * 2**20  # two 4 MB intermediates: a block the allocator would see
    assert max(held) < 2**20, held  # each call's temporaries were freed by the time it returned


def test_a_users_dispatch_choice_is_left_alone(monkeypatch):
    monkeypatch.setenv("JAX_CPU_ENABLE_ASYNC_DISPATCH", "1")
    assert run_cpu_steps_inline() is False


def test_a_long_compile_hands_the_memory_freed_before_it_back_to_the_kernel():
    """With freed memory kept, what a compile frees would stay resident beside the program's first run; the
    listener trims once JAX reports a compile of at least the threshold (0 here, so any compile counts)."""
    probe = ("from cnn_flax.runtime import keep_freed_host_memory, release_memory_after_compiles\n"
             "from cnn_flax.bench.cli import rss_mb\n"
             "assert keep_freed_host_memory()\n"
             "import jax, jax.numpy as jnp\n"
             "x = jnp.ones(8)\n"
             "release_memory_after_compiles(0.0)\n"
             "block = bytearray(300 * 2**20); del block; kept = rss_mb()\n"
             "jax.jit(lambda v: v * 3 + 1)(x).block_until_ready()\n"
             "compiled = rss_mb()\n"
             "release_memory_after_compiles(3600.0)\n"
             "block = bytearray(300 * 2**20); del block; kept_again = rss_mb()\n"
             "jax.jit(lambda v: v * 5 - 2)(x).block_until_ready()\n"
             "print(round(kept), round(compiled), round(kept_again), round(rss_mb()))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    kept, compiled, kept_again, short = map(int, subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                                                text=True, env=env, check=True).stdout.split())
    assert compiled < kept - 250  # trimmed when the compile was reported
    assert short > kept_again - 10  # a compile under the threshold leaves the heap alone
