"""`python -m cnn_flax.bench.kernels`: both variants compiled once each, alternated, and its flags checked."""

import re

import pytest
from run_configs import tiny_config

from cnn_flax.bench.kernels import format_line, kernel_figures, main
from cnn_flax.errors import UserError


def test_the_line_alternates_kernels_on_and_off_in_one_process():
    """From a run of a fraction of a second per phase (no speed is judged)."""
    figures = kernel_figures(tiny_config(), seconds=0.1, kernels=("conv_kernel_gradient",), rounds=2)
    line = format_line(figures)
    assert re.fullmatch(r"kernels model=minivgg batch=32 off=conv_kernel_gradient step_on_img_per_s=[\d.]+ .*"
                        r"rounds=2 compiles=1", line), line
    for kind in ("step", "eval"):
        for what in ("on_img_per_s", "off_img_per_s", "on_over_off", "on_over_off_cpu"):
            assert figures[f"{kind}_{what}"] > 0


def test_bad_flags_are_one_line_errors():
    with pytest.raises(UserError, match="--seconds 0: give the positive"):
        kernel_figures(tiny_config(), seconds=0, kernels=("max_pool",))
    with pytest.raises(UserError, match="--kernels conv: name one or more of max_pool, batch_norm"):
        kernel_figures(tiny_config(), seconds=1, kernels=("conv",))
    with pytest.raises(UserError, match="--rounds 0: must be positive"):
        main(["--config", "configs/quickstart.py", "--rounds", "0"])
