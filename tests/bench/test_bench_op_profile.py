"""The profile's categories from HLO metadata, and its trace reading, on a real traced gradient of a convolution."""
# ruff: noqa: E501 - HLO lines are kept whole, as XLA prints them

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_configs import tiny_config

from cnn_flax.bench import op_profile
from cnn_flax.errors import UserError

HLO = """
ENTRY %main {
  %p = f32[8,3,3,4]{3,2,1,0} parameter(0)
  %conv.1 = f32[8,16,16,32]{3,2,1,0} convolution(%p, %k), window={size=3x3}, metadata={op_name="jit(train_step)/jvp(Net)/block1/conv/conv_general_dilated"}
  %convolution-base-dilated.2 = f32[8,16,16,4]{3,2,1,0} convolution(%g, %k), metadata={op_name="jit(train_step)/transpose(jvp(Net))/block1/conv/conv_general_dilated"}
  %transpose_copy_fusion.3 = f32[4,16,16,8]{3,2,1,0} fusion(%p), kind=kLoop, calls=%fused_computation.3
  %convolution.4 = f32[32,3,3,4]{3,2,1,0} convolution(%transpose_copy_fusion.3, %g), window={size=16x16}
  %multiply_add_fusion.5 = f32[8,16,16,32]{3,2,1,0} fusion(%conv.1), kind=kLoop, metadata={op_name="jit(train_step)/jvp(Net)/block1/bn/add"}
  %maximum_concatenate_fusion.6 = f32[8,16,16,64]{3,2,1,0} fusion(%a, %b), metadata={op_name="jit(train_step)/jvp(Net)/block1/concatenate"}
  %select_pad_fusion.7 = f32[8,16,16,64]{3,2,1,0} fusion(%a), metadata={op_name="jit(train_step)/transpose(jvp(Net))/block1/pool/transpose()/pad"}
  %slice_select_fusion.8 = f32[8,16,16,32]{3,2,1,0} fusion(%a), metadata={op_name="jit(train_step)/transpose(jvp(Net))/block1/select_n"}
  %add.9 = f32[32]{0} add(%w, %u), metadata={op_name="jit(train_step)/sgd/add"}
  %maximum.11 = f32[8,8,8,64]{3,2,1,0} maximum(%a, %b), metadata={op_name="jit(predict_step)/Net/pool2/max"}
  %maximum.10 = f32[8,16,16,32]{3,2,1,0} maximum(%a, %b), metadata={op_name="jit(train_step)/jvp(Net)/block1/pool_proj/relu/max"}
  %select_maximum_fusion.12 = f32[8,8,8,64]{3,2,1,0} fusion(%a), metadata={op_name="jit(train_step)/jvp(VGG)/block1_pool/max"}
  %select_fusion.13 = f32[8,16,16,64]{3,2,1,0} fusion(%a), metadata={op_name="jit(train_step)/transpose(jvp(VGG))/block2_pool/select_n"}
  %reduce.14 = f32[8,64]{1,0} reduce(%a, %c), metadata={op_name="jit(predict_step)/VGG/global_max_pooling/reduce_max"}
  %maximum.15 = f32[8,16,16,64]{3,2,1,0} maximum(%a, %b), metadata={op_name="jit(predict_step)/VGG/block1_conv2/relu/max"}
}
"""


def test_categories_follow_layer_direction_and_shape():
    categories = op_profile.instruction_categories(HLO, batch=8)
    assert categories == {
        "p": "convolution forward",  # what first uses it
        "conv.1": "convolution forward",
        "convolution-base-dilated.2": "convolution input gradient",
        "transpose_copy_fusion.3": "convolution kernel gradient: layout copies",  # used by a kernel gradient
        "convolution.4": "convolution kernel gradient",  # XLA's kernel-gradient convolution has no metadata
        "multiply_add_fusion.5": "BatchNorm",
        "maximum_concatenate_fusion.6": "concatenation",
        "select_pad_fusion.7": "pooling",
        "slice_select_fusion.8": "activation",
        "add.9": op_profile.OUTSIDE_MODEL,
        "maximum.11": "pooling",
        "maximum.10": "activation",  # of the pooling branch's projection, not pooling
        "select_maximum_fusion.12": "pooling",  # VGG names its pools block1_pool …
        "select_fusion.13": "pooling",
        "reduce.14": "pooling",  # … and its global pooling global_max_pooling
        "maximum.15": "activation",
    }
    events = [dict(ph="X", name="conv.1", dur=3e6), dict(ph="X", name="convolution.4", dur=1e6),
              dict(ph="X", name="conv.1", dur=1e6), dict(ph="X", name="$python frame", dur=9e6),
              dict(ph="i", name="add.9", dur=5e6)]
    seconds = op_profile.operation_seconds(events, categories)
    assert seconds == {"convolution forward": 4.0, "convolution kernel gradient": 1.0}
    table = op_profile.shares_table({"train": seconds, "inference": {"convolution forward": 2.0}})
    assert "| convolution forward | 80.0% | 100.0% |" in table
    assert "| convolution kernel gradient | 20.0% | 0.0% |" in table and "BatchNorm" not in table


def test_trace_of_a_compiled_gradient_is_read_by_instruction(tmp_path):
    def loss(x, kernel):
        with jax.named_scope("Net"), jax.named_scope("conv"):  # the names a Flax module gives its ops
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(y))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    args = (jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 8)), jnp.float32), jnp.ones((3, 3, 8, 8)))
    jax.block_until_ready(grad(*args))
    categories = op_profile.instruction_categories(grad.lower(*args).compile().as_text(), batch=4)
    with jax.profiler.trace(str(tmp_path)):
        jax.block_until_ready(grad(*args))
    seconds = op_profile.operation_seconds(op_profile.trace_events(str(tmp_path)), categories)
    # Every direction of the convolution ran and was timed under its own category.
    assert {"convolution forward", "convolution input gradient", "convolution kernel gradient"} <= set(seconds)
    assert all(value > 0 for value in seconds.values())


def test_profile_of_a_model_covers_every_direction_of_its_convolutions():
    columns = op_profile.profile(tiny_config(), steps=1)
    assert {"convolution forward", "convolution input gradient", "convolution kernel gradient",
            "BatchNorm"} <= {category for category, seconds in columns["train"].items() if seconds > 0}
    assert columns["inference"]["convolution forward"] > 0
    assert not any("gradient" in category for category in columns["inference"])


def test_off_names_only_known_kernels():
    with pytest.raises(UserError, match="--off conv: conv is not a CPU kernel; name some of max_pool"):
        op_profile.main(["--config", "configs/quickstart.py", "--off", "conv"])
