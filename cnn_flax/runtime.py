"""Process-wide settings that make runs start and step faster and hold less memory; `launch.py` applies them.

They act on the whole process (an environment variable and a JAX setting read when JAX's CPU client
starts, and glibc's allocator), so importing the library never applies them: the command line does, and
research code that trains on CPU can call `tune_cpu()` first thing. On a GPU or TPU they change nothing that matters.
`use_compile_cache` keeps compiled programs on disk, which pays on every backend. Figures and what
else was tried: docs/performance.md, "What makes it fast on a CPU".
"""

import ctypes
import functools
import mmap
import os
import sys
from pathlib import Path

_YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
_EIGEN_CONVOLUTIONS = f"--{_YNN_FLAG}=-individual_convolution"
# What the jaxlib binary must contain for the flag above to parse: an unknown XLA flag aborts the process.
_FLAG_MARKERS = (_YNN_FLAG.encode(), b"LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
_MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_ASYNC_DISPATCH = "jax_cpu_enable_async_dispatch"
OPT_OUT = "CNN_FLAX_CPU_TUNING"  # set to 0 to leave every setting here alone


def tune_cpu() -> list[str]:
    """Apply the settings unless opted out; returns the names of those applied (for the log)."""
    if os.environ.get(OPT_OUT, "1") == "0":
        return []
    applied = []
    if prefer_eigen_convolutions():
        applied.append("eigen_convolutions")
    if keep_freed_host_memory():
        applied.append("keep_freed_host_memory")
        release_memory_after_compiles()
        applied.append("release_memory_after_compiles")
    if run_cpu_steps_inline():
        applied.append("run_cpu_steps_inline")
    return applied


@functools.cache
def _jaxlib_knows_flag() -> bool:
    import jaxlib

    libraries = sorted(Path(jaxlib.__file__).parent.glob("*.so"), key=lambda p: p.stat().st_size)
    if not libraries:
        return False
    with open(libraries[-1], "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as image:
        return all(image.find(marker) >= 0 for marker in _FLAG_MARKERS)


def prefer_eigen_convolutions() -> bool:
    """Keep XLA CPU's convolutions on its Eigen kernels rather than YNNPACK; True if the flag was added.

    jaxlib 0.10 hands each convolution to YNNPACK by default. Measured here (batch 64, 2 cores), YNNPACK
    ran a 3x3 convolution on one core at about 45 GFLOP/s where Eigen used both at about 90, and took
    2.6 s for a kernel gradient that Eigen computes in 0.17 s. Flags are read when the CPU backend
    starts, so this must run before the first JAX computation. A choice already made in XLA_FLAGS is
    left alone, and so is a jaxlib that does not know the flag (XLA would abort on it).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _YNN_FLAG in flags or not _jaxlib_knows_flag():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {_EIGEN_CONVOLUTIONS}".strip()
    return True


def keep_freed_host_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of unmapping it; True if the settings took.

    XLA's CPU runtime allocates each execution's temporaries as one block (214 MB for MiniVGG's train
    step at batch 64) from a worker thread. glibc serves a block that large with a fresh mmap and unmaps
    it on free, so every step page-faulted 52,000 zeroed pages back in: a third of the step's CPU time
    went to the kernel. With one arena (worker threads would otherwise get 64 MB heaps, too small for
    the block), no mmap and no trimming below 2 GiB, the block is reused and the faults go. The cost is
    that the process keeps up to that much freed memory. Left alone when a MALLOC_* variable is set
    (the user chose), and off glibc.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    keep = (1 << 31) - 1
    return all([libc.mallopt(m_arena_max, 1) == 1, libc.mallopt(m_mmap_threshold, keep) == 1,
                libc.mallopt(m_trim_threshold, keep) == 1])


def run_cpu_steps_inline() -> bool:
    """Run each CPU computation in the thread that calls it rather than queueing it; True if set.

    XLA's CPU client frees an execution's temporaries on its worker thread a little after the results
    are marked ready, while the next step, already dispatched, takes its own block the moment those results
    are there. With the allocator keeping freed memory (`keep_freed_host_memory`), the two blocks then stay
    resident side by side: measured here (batch 64) MiniGoogLeNet's bare steps held 1,165-1,508 MB, three
    times its 343 MB of temporaries over one block, and 863 MB run inline; MiniVGG 717 against 553. The
    step's CPU time is unchanged (MiniVGG 142-162 ms, MiniGoogLeNet 975-1,063 ms per step either way):
    on a CPU the device is this process's own cores, so queueing overlaps only the Python between steps
    with the step. Must run before the CPU backend starts; a choice in
    $JAX_CPU_ENABLE_ASYNC_DISPATCH is left alone. Computations over several CPU devices stay queued (JAX
    runs only one-device computations inline).
    """
    if "JAX_CPU_ENABLE_ASYNC_DISPATCH" in os.environ:
        return False
    import jax

    jax.config.update(_ASYNC_DISPATCH, False)
    return True


def release_freed_host_memory() -> bool:
    """Hand what the heap holds freed back to the kernel, once (glibc's malloc_trim); True if some went.

    With `keep_freed_host_memory` glibc never trims, so that every step reuses its temporaries' block; but
    what compiling the train step frees then stays resident for the whole run as well. Measured here
    (MiniGoogLeNet, batch 64, 2-core CPU): 1.42 GB resident over the steps without, 1.19 GB when this ran
    once after the first step. The next step takes its block again and keeps it, so it costs one step's
    page faults. Does nothing off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.malloc_trim(0))


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # JAX records it after each XLA compile
LONG_COMPILE_SECONDS = 1.0  # compiles shorter than this free too little to be worth a trim


def release_memory_after_compiles(min_seconds: float = LONG_COMPILE_SECONDS) -> None:
    """After every XLA compile of at least `min_seconds`, hand what it freed back to the kernel, before the
    compiled program first runs.

    Compiling a train step takes hundreds of megabytes (LLVM) and frees them in pieces. With freed memory
    kept (`keep_freed_host_memory`) those pieces stayed resident while the first run took its temporaries
    as one fresh block beside them, so a process that compiled its step peaked at the compile's memory
    plus the step's. JAX reports each compile's duration to its monitoring listeners between compiling
    and running, which is where this trims. Short compiles (the many small eager operations) are skipped:
    a trim walks the whole heap.
    """
    import jax

    if _trim_after_compiles.min_seconds is None:
        jax.monitoring.register_event_duration_secs_listener(_trim_after_compiles)
    _trim_after_compiles.min_seconds = min_seconds


class _TrimAfterCompiles:
    """The one listener `release_memory_after_compiles` registers (calling it again changes its threshold)."""

    min_seconds: float | None = None

    def __call__(self, event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event == _COMPILE_EVENT and self.min_seconds is not None and duration_secs >= self.min_seconds:
            release_freed_host_memory()


_trim_after_compiles = _TrimAfterCompiles()


def use_compile_cache() -> str:
    """Keep compiled XLA programs on disk between runs; returns the folder, or "" when switched off.

    Compiling a train step takes tens of seconds on a CPU (DeeperGoogLeNet: about a minute here), and
    train, evaluate, predict and ablation runs of one config compile the same programs again. JAX's
    persistent cache keys each program by its HLO, the XLA flags and the device, so a stale entry is
    never used. The folder is $JAX_COMPILATION_CACHE_DIR when set, else $XDG_CACHE_HOME/cnn_flax/jax
    (~/.cache/cnn_flax/jax); JAX_COMPILATION_CACHE_DIR="" switches it off.
    """
    import jax

    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # JAX reads it itself
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(cache_home, "cnn_flax", "jax")
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder
