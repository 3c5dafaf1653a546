"""The CPU max pooling equals XLA's own op, alone and inside a model that is created with it.

Forward values are compared exactly; gradients within float32 rounding, since an element that is the
maximum of several windows sums their gradients in another order than select-and-scatter does.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from run_configs import tiny_config

from cnn_flax.models import cpu_kernels, create_model, init_variables
from cnn_flax.models.layers import ConvModule, Inception, MaxPool
from cnn_flax.run.experiment import initial_variables
from cnn_flax.run.train import Trainer
from cnn_flax.training.metrics import TrainMetrics

# (window, stride, padding, height, width): the deck's pools (2x2/2, 3x3/1 'same', 3x3/2 'same' and
# 'valid') on even and odd sizes, non-square maps, a 2x2/2 'same' with padding at the end, and 3x3/3.
POOL_CASES = [(2, 2, "VALID", 8, 8), (2, 2, "VALID", 7, 9), (2, 2, "SAME", 7, 5), (3, 1, "SAME", 7, 7),
              (3, 1, "SAME", 6, 9), (3, 2, "SAME", 9, 9), (3, 2, "SAME", 8, 8), (3, 2, "SAME", 8, 11),
              (3, 2, "VALID", 9, 9), (3, 2, "VALID", 15, 8), (3, 3, "SAME", 7, 8)]


def _inputs(kind: str, height: int, width: int) -> jax.Array:
    """Random values; small integers (ties in almost every window); or ReLU outputs with -inf patches."""
    rng = np.random.default_rng(2)
    shape = (2, height, width, 3)
    if kind == "random":
        return jnp.asarray(rng.normal(size=shape), jnp.float32)
    if kind == "ties":
        return jnp.asarray(np.maximum(rng.integers(-2, 2, size=shape), 0), jnp.float32)  # mostly zeros
    values = np.maximum(rng.normal(size=shape), 0)
    values[rng.random(shape) < 0.3] = -np.inf  # windows whose real elements tie at -inf with the padding
    return jnp.asarray(values, jnp.float32)


@pytest.mark.parametrize("window,stride,padding,height,width", POOL_CASES)
@pytest.mark.parametrize("kind", ["random", "ties", "minus_inf"])
def test_max_pool_and_its_gradient_equal_xla_even_with_ties(window, stride, padding, height, width, kind):
    rng = np.random.default_rng(3)
    x = _inputs(kind, height, width)
    pads = lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding)

    def reference(v):
        return lax.reduce_window(v, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), *pads, (0, 0)))

    def ours(v):
        return cpu_kernels.max_pool(v, window, stride, padding)

    out, ours_vjp = jax.vjp(ours, x)
    expected, reference_vjp = jax.vjp(reference, x)
    np.testing.assert_array_equal(out, expected)
    grad = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    # Ties: the whole gradient of a window goes to one maximum, the same one select-and-scatter picks.
    ours_grad, reference_grad = ours_vjp(grad)[0], reference_vjp(grad)[0]
    np.testing.assert_allclose(ours_grad, reference_grad, rtol=1e-6, atol=1e-6)
    # The same elements receive gradient: no window's gradient went to a neighbour of XLA's choice.
    np.testing.assert_array_equal(ours_grad != 0, reference_grad != 0)


class _InceptionThenLogits(nn.Module):
    """GoogLeNet's inception (its 3x3/1 'same' pool) on BatchNorm-ReLU outputs, then a 3x3/2 pool."""

    cpu_kernels: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = ConvModule(8, 3, name="stem")(x, train)
        x = Inception((4, 4, 6, 2, 3, 3), cpu_kernels=self.cpu_kernels, name="inception")(x, train)
        x = MaxPool(3, 2, "SAME", cpu_kernels=self.cpu_kernels, name="pool")(x)
        return nn.Dense(2)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("name", ["minivgg", "inception"])
def test_a_model_created_with_cpu_kernels_computes_what_plain_linen_computes(name):
    if name == "minivgg":
        plain = create_model(dict(name="minivgg", num_classes=4))
        fast = create_model(dict(name="minivgg", num_classes=4), cpu_kernels=True)
    else:
        plain, fast = _InceptionThenLogits(), _InceptionThenLogits(cpu_kernels=True)
    assert fast.cpu_kernels and not plain.cpu_kernels
    variables = init_variables(plain, jax.random.key(0), (16, 16, 3))
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))

    def loss(model, params):
        logits, _ = model.apply({**variables, "params": params}, images, train=True,
                                rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(2)).mean()

    expected, expected_grads = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(variables["params"])
    value, grads = jax.jit(jax.value_and_grad(lambda p: loss(fast, p)))(variables["params"])
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    # BatchNorm's gradient sums differently (see below): equal within float32 rounding of the gradients' scale
    # (a conv bias before BatchNorm has a zero gradient, of which both sides hold rounding noise). The largest
    # difference seen is 2.8e-6 of the scale (on an AMD EPYC; under 1e-6 on the Intel Xeon); a wrong gradient
    # is off by 1e-2 of it or more.
    scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(expected_grads))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale),
                           grads, expected_grads)


def test_the_train_step_with_cpu_kernels_compiles_once():
    trainer = Trainer(tiny_config())
    assert trainer.experiment.model.cpu_kernels  # the experiment chose them for the CPU backend
    state = trainer.parallel.put_replicated(trainer.new_state(initial_variables(trainer.experiment)))
    metrics = trainer.parallel.put_replicated(TrainMetrics.empty())
    batches = trainer.batches("train", shuffle=True, epoch=0, drop_remainder=True)
    for _, batch in zip(range(3), batches, strict=False):
        state, metrics = trainer.train_step(state, trainer.parallel.put_batch(batch), metrics)
    assert np.isfinite(np.asarray(jax.tree.leaves(trainer.parallel.fetch(state.params))[0])).all()
    assert trainer.compile_count("train") == 1


def _batch_norm_outputs(kind: type[nn.BatchNorm], x: jax.Array, axis_name: str | None = None,
                        dtype=jnp.float32):
    """Output, updated statistics and gradients (input, scale, bias) of a training step through `kind`."""
    bn = kind(use_running_average=False, momentum=0.9, epsilon=1e-3, dtype=dtype, axis_name=axis_name)
    variables = kind(use_running_average=False, epsilon=1e-3).init(jax.random.key(0), x[:2])
    params = {"scale": jnp.linspace(0.5, 1.5, x.shape[-1]), "bias": jnp.linspace(-1, 1, x.shape[-1])}
    weights = jnp.cos(jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape))

    def loss(x, params):
        y, updates = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
        return jnp.sum(jax.nn.relu(y.astype(jnp.float32)) * weights), (y, updates["batch_stats"])

    (_, (y, stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, params)
    return y, stats, grads


def test_batch_norm_equals_flax_values_statistics_and_gradients():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(6, 5, 7, 8)) * 2 + 0.7, jnp.float32)
    ours, theirs = (jax.jit(lambda v, k=k: _batch_norm_outputs(k, v)) for k in (cpu_kernels.BatchNorm, nn.BatchNorm))
    (y, stats, grads), (expected_y, expected_stats, expected_grads) = ours(x), theirs(x)
    np.testing.assert_array_equal(y, expected_y)  # the same operations in the same order
    jax.tree.map(np.testing.assert_array_equal, stats, expected_stats)
    # Gradients by other formulas (Σg·x − mean·Σg for Σg·(x − mean)): equal within float32 rounding.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), grads, expected_grads)

    # Initialisation and inference are Flax's own code path: the same variables and the same outputs.
    inference = {"params": {"scale": jnp.linspace(0.5, 1.5, 8), "bias": jnp.zeros(8)}, "batch_stats": stats}
    for train in (True, False):
        variables = [kind(use_running_average=not train).init(jax.random.key(0), x)
                     for kind in (cpu_kernels.BatchNorm, nn.BatchNorm)]
        jax.tree.map(np.testing.assert_array_equal, *variables)
    outputs = [kind(use_running_average=True, epsilon=1e-3).apply(inference, x)
               for kind in (cpu_kernels.BatchNorm, nn.BatchNorm)]
    np.testing.assert_array_equal(*outputs)

    half = x.astype(jnp.bfloat16)  # half_precision: bfloat16 in and out, float32 statistics
    ours_half = _batch_norm_outputs(cpu_kernels.BatchNorm, half, dtype=jnp.bfloat16)
    theirs_half = _batch_norm_outputs(nn.BatchNorm, half, dtype=jnp.bfloat16)
    assert ours_half[0].dtype == jnp.bfloat16 and ours_half[2][0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(ours_half[0].astype(jnp.float32), theirs_half[0].astype(jnp.float32))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                                         rtol=2e-2, atol=2e-2), ours_half[2], theirs_half[2])


def test_batch_norm_under_pmap_averages_over_devices_like_flax():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 4, 3, 3, 5)) + 0.3, jnp.float32)  # 2 devices, 4 images each

    def run(kind):
        return jax.pmap(lambda v: _batch_norm_outputs(kind, v, axis_name="devices"), axis_name="devices")(x)

    (y, stats, grads), (expected_y, expected_stats, expected_grads) = run(cpu_kernels.BatchNorm), run(nn.BatchNorm)
    np.testing.assert_allclose(y, expected_y, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), stats, expected_stats)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), grads, expected_grads)


# (kernel, input channels, output channels, padding, height, width): the 1x1 convolutions of the Inception
# networks and NiN, 3x3 and 5x5 'same' with C >= O (rewritten), 2x2 'same' (padding only at the end),
# explicit pads; then what stays XLA's: kxk with C < O, 'valid' kxk, a padded 1x1, strides (below).
CONV_CASES = [(1, 5, 3, "SAME", 6, 7), (1, 3, 8, "VALID", 5, 5), (3, 6, 4, "SAME", 7, 6), (3, 4, 4, "SAME", 5, 5),
              (5, 6, 3, "SAME", 8, 9), (2, 5, 3, "SAME", 6, 5), (3, 4, 4, ((1, 1), (1, 1)), 6, 6),
              (3, 3, 8, "SAME", 6, 6), (3, 6, 4, "VALID", 7, 7), (1, 5, 3, ((1, 1), (0, 0)), 5, 5)]


def _conv_pair(kernel, channels, features, padding, height, width, strides=(1, 1)):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(3, height, width, channels)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, channels, features)), jnp.float32)
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def ours(x, w):
        return cpu_kernels.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers)

    def reference(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers)

    return x, w, ours, reference


@pytest.mark.parametrize("kernel,channels,features,padding,height,width", CONV_CASES)
def test_convolution_and_its_gradients_equal_xla(kernel, channels, features, padding, height, width):
    x, w, ours, reference = _conv_pair(kernel, channels, features, padding, height, width)
    out, ours_vjp = jax.vjp(ours, x, w)
    expected, reference_vjp = jax.vjp(reference, x, w)
    np.testing.assert_array_equal(out, expected)  # the forward pass is XLA's own convolution
    grad = jnp.asarray(np.random.default_rng(6).normal(size=out.shape), jnp.float32)
    for name, got, want in zip(("input", "kernel"), ours_vjp(grad), reference_vjp(grad), strict=True):
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale, err_msg=name)
    rewritten = "custom_vjp" in str(jax.make_jaxpr(ours)(x, w))
    pads = padding if not isinstance(padding, str) else lax.padtype_to_pads((height, width), (kernel,) * 2, (1, 1),
                                                                            padding)
    same = all(sum(p) == kernel - 1 for p in pads)
    assert rewritten == ((kernel == 1 and same) or (kernel > 1 and same and channels >= features))


def test_strided_and_dilated_convolutions_stay_xla_s():
    x, w, ours, reference = _conv_pair(3, 6, 4, "SAME", 8, 8, strides=(2, 2))
    assert "custom_vjp" not in str(jax.make_jaxpr(ours)(x, w))
    np.testing.assert_array_equal(jax.grad(lambda w: ours(x, w).sum())(w), jax.grad(lambda w: reference(x, w).sum())(w))
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    dilated = jax.make_jaxpr(lambda x, w: cpu_kernels.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                                                           dimension_numbers=numbers))(x, w)
    assert "custom_vjp" not in str(dilated)


def _transposed_shapes(compiled_hlo: str) -> set[tuple[int, ...]]:
    """Result shapes of the transposes in a compiled module (XLA's layout copies are transposes)."""
    found = re.findall(r"= f32\[([\d,]+)\]\{[\d,]*\} transpose\(", compiled_hlo)
    return {tuple(int(d) for d in dims.split(",")) for dims in found}


@pytest.mark.parametrize("kernel", [1, 3])
def test_the_kernel_gradient_does_not_copy_the_input_to_channel_major(kernel):
    """What the rewrite is for: XLA's kernel gradient transposes the input to (C, H, W, N) first."""
    x, w, ours, reference = _conv_pair(kernel, 8, 4, "SAME", 6, 6)
    grad = jnp.ones((3, 6, 6, 4), jnp.float32)

    def kernel_gradient(conv):
        return jax.jit(lambda x, w: jax.vjp(lambda w: conv(x, w), w)[1](grad)[0]).lower(x, w).compile().as_text()

    channel_major = (8, 6, 6, 3)
    assert channel_major in _transposed_shapes(kernel_gradient(reference))  # XLA's own: the copy is there
    assert channel_major not in _transposed_shapes(kernel_gradient(ours))


def test_switched_off_kernels_trace_xla_s_ops_and_unknown_names_fail():
    model = create_model(dict(name="minivgg", num_classes=4), cpu_kernels=True)
    variables = init_variables(model, jax.random.key(0), (8, 8, 3))
    images = jnp.ones((2, 8, 8, 3))

    def jaxpr():
        return str(jax.make_jaxpr(lambda v: model.apply(v, images, train=True, mutable=["batch_stats"],
                                                        rngs={"dropout": jax.random.key(1)}))(variables))

    assert jaxpr().count("custom_vjp") >= 3  # pooling, BatchNorm, a convolution
    with cpu_kernels.switched_off(*cpu_kernels.KERNELS):
        assert "custom_vjp" not in jaxpr()
    assert jaxpr().count("custom_vjp") >= 3  # the switch ends with its block
    with pytest.raises(ValueError, match="unknown CPU kernel"), cpu_kernels.switched_off("conv"):
        pass


@pytest.mark.parametrize("kernel", [1, 3])
def test_the_bfloat16_kernel_gradient_is_as_close_to_float32_as_xla_s(kernel):
    """Half precision (`half_precision`) takes the rewrite too: its gradient, in bfloat16 like XLA's, errs no more."""
    x, w, ours, reference = _conv_pair(kernel, 8, 4, "SAME", 6, 6)
    grad = jnp.asarray(np.random.default_rng(7).normal(size=(3, 6, 6, 4)), jnp.float32)
    half = [a.astype(jnp.bfloat16) for a in (x, w, grad)]

    def kernel_gradient(conv, x, w, grad):
        return jax.vjp(lambda w: conv(x, w), w)[1](grad)[0]

    exact = kernel_gradient(reference, *(a.astype(jnp.float32) for a in half))
    got, xla = kernel_gradient(ours, *half), kernel_gradient(reference, *half)
    assert got.dtype == xla.dtype == jnp.bfloat16
    scale = float(np.abs(exact).max())
    assert float(np.abs(got.astype(jnp.float32) - exact).max()) <= max(
        float(np.abs(xla.astype(jnp.float32) - exact).max()), 1e-2 * scale)
