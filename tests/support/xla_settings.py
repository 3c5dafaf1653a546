"""The XLA flags of every process the suite starts: its test workers, launch.py runs, benchmark children."""

# XLA's CPU backend compiles each fusion with its MLIR fusion emitters by default; with its classic LLVM IR
# emitters the same programs compile in a third to a half of the time. The suite compiles thousands of small
# programs and runs each a few times: from an empty compile cache (a fresh clone) compiling was a third of its
# test time (515 of 1,629 s). Measured on 2 cores, the CPU-kernel tests compiled 551 programs in 18.8 s with
# the emitters and 7.4 s without; the augmentation and learning-rate finder tests 37.0 s and 26.9 s (the rest
# of those files: 21.6 s and 23.4 s, running the compiled programs a little slower).
# Users' runs keep XLA's default: they compile a step once and run it thousands of times.
FAST_COMPILES = "--xla_cpu_use_fusion_emitters=false"


def xla_flags(devices: int) -> str:
    """`devices` CPU devices (as a multi-device machine would have), compiled with the suite's flags."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILES}"
