"""The CPU rewrites of the convolution kernel gradient and of max pooling equal XLA's own ops."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_flax.models import cpu_kernels

NHWC = ("NHWC", "HWIO", "NHWC")


def _reference_conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


CONV_CASES = [  # (input shape, kernel shape, strides, padding)
    ((2, 12, 12, 3), (3, 3, 3, 5), (1, 1), "SAME"),
    ((2, 9, 11, 4), (5, 5, 4, 3), (1, 1), "SAME"),
    ((2, 10, 10, 6), (3, 3, 6, 2), (1, 1), "VALID"),
    ((2, 11, 11, 3), (3, 3, 3, 4), (2, 2), "VALID"),
    ((2, 12, 12, 3), (3, 3, 3, 4), (2, 2), "SAME"),  # TensorFlow's uneven padding: 0 before, 1 after
    ((3, 7, 7, 8), (1, 1, 8, 4), (1, 1), "SAME"),
]


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CONV_CASES)
def test_every_form_of_the_kernel_gradient_equals_xla(x_shape, k_shape, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
    out, vjp = jax.vjp(lambda k: _reference_conv(x, k, strides, padding), kernel)
    grad = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    (expected,) = vjp(grad)
    pads = cpu_kernels._explicit_padding(padding, x_shape[1:3], k_shape[:2], strides)
    kh, kw = k_shape[:2]
    forms = {"windows": cpu_kernels._kernel_grad_windows(x, grad, kh, kw, strides, pads),
             "chosen": cpu_kernels._kernel_grad(x, grad, k_shape, strides, pads)}
    if strides == (1, 1):
        for form in ("rows_and_columns", "grad_shifts"):
            forms[form] = cpu_kernels._kernel_grad_flat(x, grad, kh, kw, pads, form)
    for name, value in forms.items():
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4, err_msg=name)


def test_the_public_convolution_equals_xla_in_value_and_both_gradients():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 32, 32, 4)), jnp.float32)  # 1024 output pixels: the flat form
    kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)

    def loss(conv, x, kernel):
        return jnp.sum(jnp.sin(conv(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)))

    ours = jax.jit(jax.value_and_grad(lambda a, b: loss(cpu_kernels.conv_general_dilated, a, b), argnums=(0, 1)))
    theirs = jax.jit(jax.value_and_grad(lambda a, b: loss(lax.conv_general_dilated, a, b), argnums=(0, 1)))
    (value, grads), (expected_value, expected_grads) = ours(x, kernel), theirs(x, kernel)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


POOL_CASES = [(2, 2, "VALID", 8), (3, 1, "SAME", 7), (3, 2, "SAME", 9), (3, 2, "VALID", 9), (3, 2, "SAME", 8)]


@pytest.mark.parametrize("window,stride,padding,size", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_and_its_gradient_equal_xla_even_with_ties(window, stride, padding, size, ties):
    rng = np.random.default_rng(2)
    values = rng.integers(0, 3, size=(2, size, size, 3)) if ties else rng.normal(size=(2, size, size, 3))
    x = jnp.asarray(values, jnp.float32)
    pads = lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding)

    def reference(v):
        return lax.reduce_window(v, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), *pads, (0, 0)))

    def ours(v):
        return cpu_kernels._max_pool(v, window, stride, tuple(tuple(p) for p in pads))

    out, ours_vjp = jax.vjp(ours, x)
    expected, reference_vjp = jax.vjp(reference, x)
    np.testing.assert_array_equal(out, expected)
    grad = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    # Ties: the whole gradient of a window goes to one maximum, the same one select-and-scatter picks.
    np.testing.assert_allclose(ours_vjp(grad)[0], reference_vjp(grad)[0], rtol=1e-6, atol=1e-6)
