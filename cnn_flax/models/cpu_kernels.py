"""Gradients that XLA's CPU backend computes slowly, rewritten; GPUs and TPUs keep XLA's own.

Measured on MiniVGG (batch 64, 2 cores): the kernel gradient of a 2-D convolution ran about twenty times
slower than its forward pass (95% of a train step), and max pooling's gradient (select-and-scatter)
seventy times slower than the pooling. Here the kernel gradient is kh·kw matrix products of shifted
input slices with the output gradient, [Cin, B·H·W] @ [B·H·W, Cout], with no im2col matrix; the pooling
gradient routes the output gradient to the window maxima through strided slices. Forward passes and
the convolution's input gradient are XLA's own.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _explicit_padding(padding: Any, spatial: Sequence[int], kernel: Sequence[int],
                      strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(tuple(spatial), tuple(kernel), tuple(strides), padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)


def _conv_fwd(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda v: lax.conv_general_dilated(v, kernel, strides, padding, dimension_numbers=_NHWC), x)
    (grad_x,) = input_vjp(grad)
    kh, kw = kernel.shape[:2]
    out_h, out_w = grad.shape[1:3]
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    flat_grad = grad.reshape(-1, grad.shape[-1])
    rows = []
    for i in range(kh):
        for j in range(kw):
            rows_end, cols_end = i + (out_h - 1) * strides[0] + 1, j + (out_w - 1) * strides[1] + 1
            window = padded[:, i:rows_end:strides[0], j:cols_end:strides[1]]
            rows.append(jnp.dot(window.reshape(-1, window.shape[-1]).T, flat_grad,
                                preferred_element_type=jnp.float32))
    grad_kernel = jnp.stack(rows).reshape(kernel.shape).astype(kernel.dtype)
    return grad_x, grad_kernel


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """Drop-in for `lax.conv_general_dilated` as Flax's `nn.Conv` calls it (2-D, NHWC/HWIO)."""
    plain = (jax.default_backend() == "cpu" and lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
             and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
             and _is_nhwc(dimension_numbers, lhs.ndim) and preferred_element_type is None)
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    strides = tuple(int(s) for s in window_strides)
    pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], strides)
    return _conv(lhs, rhs, strides, pads)


def _is_nhwc(dimension_numbers: Any, ndim: int) -> bool:
    if dimension_numbers is None:
        return False
    expected = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, _NHWC)
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == expected
    return tuple(dimension_numbers) == _NHWC


def _pool_windows(x: jax.Array, window: int, stride: int, pads: tuple[tuple[int, int], ...]):
    padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    out_h = (padded.shape[1] - window) // stride + 1
    out_w = (padded.shape[2] - window) // stride + 1
    for i in range(window):
        for j in range(window):
            yield padded[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride]


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: int, stride: int, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                             ((0, 0), *pads, (0, 0)))


def _max_pool_fwd(x, window, stride, pads):
    y = _max_pool(x, window, stride, pads)
    return y, (x, y)


def _max_pool_bwd(window, stride, pads, residuals, grad):
    """The first maximum of each window (in row-major order) takes the gradient, as select-and-scatter does."""
    x, y = residuals
    windows, unpool = jax.vjp(lambda v: list(_pool_windows(v, window, stride, pads)), x)
    taken = jnp.zeros(y.shape, bool)
    cotangents = []
    for window_values in windows:
        take = (window_values == y) & ~taken
        taken = taken | take
        cotangents.append(jnp.where(take, grad, jnp.zeros_like(grad)))
    (grad_x,) = unpool(cotangents)
    return (grad_x,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int, stride: int, padding: str) -> jax.Array:
    """Max pooling over H and W of an NHWC tensor ('SAME' or 'VALID', TensorFlow's padding)."""
    pads = tuple(lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding))
    if jax.default_backend() != "cpu":
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), *pads, (0, 0)))
    return _max_pool(x, window, stride, tuple(tuple(p) for p in pads))
