"""What XLA's CPU backend does slowly for these networks, worked around; GPUs and TPUs keep XLA's own ops.

Measured on this project's models (batch 64, 2 cores); each piece applies only on the CPU backend:
- Convolutions: jaxlib 0.10 gives them to YNNPACK, which computed kernel gradients about twenty times
  slower than the forward pass. `cnn_flax.runtime.tune_cpu` (run by launch.py) moves them to XLA's
  Eigen kernels, which are fast in all three directions; where YNNPACK still has them (research code
  that did not call it, or XLA_FLAGS chose otherwise), `conv_general_dilated` computes the kernel
  gradient itself, as matrix products.
- Max pooling: XLA's gradient (select-and-scatter) ran seventy times slower than the pooling (2x2/2)
  and three to four times slower than this (3x3/1 and 3x3/2): the forward pass records which window
  position held the maximum (int8) and the backward pass routes the gradient there with strided adds.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
# Below this many output pixels the zero rows of the flattened kernel gradient cost more than they save.
_FLAT_MIN_PIXELS = 512


def _explicit_padding(padding: Any, spatial: Sequence[int], kernel: Sequence[int],
                      strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(tuple(spatial), tuple(kernel), tuple(strides), padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)


def _conv_fwd(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda v: lax.conv_general_dilated(v, kernel, strides, padding, dimension_numbers=_NHWC), x)
    (grad_x,) = input_vjp(grad)
    return grad_x, _kernel_grad(x, grad, kernel.shape, strides, padding).astype(kernel.dtype)


def _kernel_grad(x: jax.Array, grad: jax.Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                 padding: tuple[tuple[int, int], ...]) -> jax.Array:
    """d loss / d kernel [kh, kw, Cin, Cout] by matrix products, choosing the form that copies the least."""
    kh, kw, cin, cout = kernel_shape
    out_pixels = grad.shape[1] * grad.shape[2]
    flat = min(((kw * cin + kh * cout), "rows_and_columns"), ((kh * kw * cout), "grad_shifts"))
    if (strides == (1, 1) and kh * kw > 1 and out_pixels >= _FLAT_MIN_PIXELS and flat[0] < kh * kw * cin
            and all(lo >= 0 and hi >= 0 for lo, hi in padding)):
        return _kernel_grad_flat(x, grad, kh, kw, padding, flat[1])
    return _kernel_grad_windows(x, grad, kh, kw, strides, padding)


def _kernel_grad_windows(x, grad, kh, kw, strides, padding):
    """One product per kernel tap: the tap's (strided) window of the input against the output gradient."""
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
    return jnp.stack(rows).reshape(kh, kw, x.shape[-1], grad.shape[-1])


def _shift_rows(a: jax.Array, offset: int) -> jax.Array:
    """`out[u] = a[u + offset]` for the rows of a 2-D array, zero where `u + offset` falls outside."""
    if offset == 0:
        return a
    if offset > 0:
        return jnp.pad(a[offset:], ((0, offset), (0, 0)))
    return jnp.pad(a[:offset], ((-offset, 0), (0, 0)))


def _kernel_grad_flat(x, grad, kh, kw, padding, form):
    """All taps of a stride-1 kernel gradient in one matrix product over the flattened padded image.

    With the padded input flattened to rows u = (b, h, w) of a [B·Hp·Wp, Cin] matrix and the output
    gradient zero-extended to the same grid, tap (i, j) pairs row t of the gradient with input row
    t + i·Wp + j (rows where the gradient is zero contribute nothing, so no window crosses an image).
    An offset can sit on either side: shifting the input by j and the gradient by -i·Wp puts every tap
    in one [kw·Cin, kh·Cout] product. That copies kw·Cin + kh·Cout columns instead of the kh·kw·Cin
    of per-tap windows, and one large product runs faster than kh·kw thin ones.
    """
    cin, cout = x.shape[-1], grad.shape[-1]
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    height, width = padded.shape[1:3]
    rows_x = padded.reshape(-1, cin)
    rows_grad = jnp.pad(grad, ((0, 0), (0, height - grad.shape[1]), (0, width - grad.shape[2]), (0, 0)))
    rows_grad = rows_grad.reshape(-1, cout)
    if form == "rows_and_columns":
        x_offsets, grad_offsets = list(range(kw)), [i * width for i in range(kh)]
    else:
        x_offsets, grad_offsets = [0], [i * width + j for i in range(kh) for j in range(kw)]
    lhs = jnp.concatenate([_shift_rows(rows_x, o) for o in x_offsets], axis=1)
    rhs = jnp.concatenate([_shift_rows(rows_grad, -o) for o in grad_offsets], axis=1)
    product = lax.dot_general(lhs, rhs, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    blocks = product.reshape(len(x_offsets), cin, len(grad_offsets), cout).transpose(2, 0, 1, 3)
    return blocks.reshape(kh, kw, cin, cout)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """Drop-in for `lax.conv_general_dilated` as Flax's `nn.Conv` calls it (2-D, NHWC/HWIO)."""
    plain = (jax.default_backend() == "cpu" and lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
             and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
             and _is_nhwc(dimension_numbers, lhs.ndim) and preferred_element_type is None)
    if not plain or not ynn_convolutions():
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


def _pool_windows(x: jax.Array, window: int, stride: int, pads: tuple[tuple[int, int], ...],
                  fill: float = -jnp.inf) -> list[jax.Array]:
    """The window*window strided views of the padded input, one per window position, row-major."""
    padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=fill)
    out_h = (padded.shape[1] - window) // stride + 1
    out_w = (padded.shape[2] - window) // stride + 1
    return [padded[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride]
            for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: int, stride: int, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    """Max over rows, then over columns: the same values as reduce_window, 2-6x faster on XLA CPU."""
    padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    out_h = (padded.shape[1] - window) // stride + 1
    out_w = (padded.shape[2] - window) // stride + 1
    rows = functools.reduce(jnp.maximum, [padded[:, i:i + (out_h - 1) * stride + 1:stride] for i in range(window)])
    return functools.reduce(jnp.maximum, [rows[:, :, j:j + (out_w - 1) * stride + 1:stride] for j in range(window)])


def _max_pool_fwd(x, window, stride, pads):
    """The maximum, and which window position holds it: the first in row-major order, as select-and-scatter."""
    y = _max_pool(x, window, stride, pads)
    hits = jnp.stack([values == y for values in _pool_windows(x, window, stride, pads)])
    position = jnp.argmax(hits, axis=0).astype(jnp.int8)
    return y, (jnp.zeros((0, *x.shape[1:]), x.dtype), position)  # the empty array carries x's shape and dtype


def _max_pool_bwd(window, stride, pads, residuals, grad):
    """Each window's gradient goes to its recorded position: window*window selects and strided adds.

    The positions are found by a reduction (argmax over the window positions), which XLA computes once
    and stores. Written as a chain of comparisons instead, XLA copied the chain into every fusion that
    reads a position, window*window times over (81 comparisons per element for 3x3 windows).
    """
    empty, position = residuals
    shape = jax.ShapeDtypeStruct((grad.shape[0], *empty.shape[1:]), empty.dtype)
    unpool = jax.linear_transpose(lambda v: _pool_windows(v, window, stride, pads, fill=0.0), shape)
    zeros = jnp.zeros_like(grad)
    (grad_x,) = unpool([jnp.where(position == k, grad, zeros) for k in range(window * window)])
    return (grad_x,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int, stride: int, padding: str) -> jax.Array:
    """Max pooling over H and W of an NHWC tensor ('SAME' or 'VALID', TensorFlow's padding)."""
    pads = tuple(lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding))
    if jax.default_backend() != "cpu":
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), *pads, (0, 0)))
    return _max_pool(x, window, stride, tuple(tuple(p) for p in pads))


@functools.cache
def ynn_convolutions() -> bool:
    """Whether this process's XLA gives plain convolutions to YNNPACK (seen in a compiled probe).

    YNNPACK computes kernel gradients about twenty times slower than the forward pass; XLA's Eigen
    convolutions (see `cnn_flax.runtime.tune_cpu`) do not need the rewrite above.
    """
    x = jax.ShapeDtypeStruct((64, 32, 32, 32), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
    probe = jax.jit(lambda a, b: lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=_NHWC))
    return "__ynn_fusion" in probe.lower(x, kernel).compile().as_text()
