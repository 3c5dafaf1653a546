"""What XLA's CPU backend does slowly for these networks, worked around; GPUs and TPUs keep XLA's own ops.

Max pooling, forward and gradient. XLA's reduce_window reads a padded copy of its input, which XLA CPU
writes out in a pass of its own, and its gradient (select-and-scatter) is slower still. Here the
windows read the input where it lies: each window offset is a strided slice of the input or, where a
window hangs over the border, a gather whose out-of-range rows repeat the nearest border row, which
leaves every maximum unchanged (a window that reaches past the border also holds the border row). For
the gradient, the forward pass records which window position held the maximum (int8, the first one in
row-major order, the padding counting as -inf, as select-and-scatter picks) and the backward pass
collects, for each input element, the gradients of the windows that chose it: one elementwise pass per
stride phase, reading the recorded positions at a few shifts.

BatchNorm in training: Flax's values, with a gradient that makes fewer full-size passes over memory
(`batch_norm_train`).

Convolutions: XLA's forward pass and input gradient (on Eigen once `cnn_flax.runtime.tune_cpu` has
moved them from YNNPACK), and a kernel gradient that does not first copy the layer's input to
channel-major (`conv_general_dilated`, `_kernel_gradient`), which `nn.Conv` takes as its
`conv_general_dilated`.

Measured: docs/performance.md, "Where the time goes" (`python -m cnn_flax.bench.kernels` times each
kernel against XLA's op in one process). Models use them all when created with `cpu_kernels=True` (the
experiment does that on a CPU backend).
"""

import contextlib
import functools
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]

KERNELS = ("max_pool", "batch_norm", "conv_kernel_gradient")
_switched_off: set[str] = set()


@contextlib.contextmanager
def switched_off(*names: str) -> Iterator[None]:
    """Within the block, models traced with `cpu_kernels=True` use XLA's or Flax's own op in place of the
    named kernels: a benchmark compiles both variants in one process to time each kernel's gain
    (`cnn_flax.bench.kernels`). Read while tracing, so a step compiled inside keeps the choice."""
    unknown = sorted(set(names) - set(KERNELS))
    if unknown:
        raise ValueError(f"unknown CPU kernel(s) {unknown}; known: {', '.join(KERNELS)}")
    before = set(_switched_off)
    _switched_off.update(names)
    try:
        yield
    finally:
        _switched_off.clear()
        _switched_off.update(before)


def _output_size(size: int, window: int, stride: int, pads: tuple[int, int]) -> int:
    return (size + pads[0] + pads[1] - window) // stride + 1


def _window_rows(size: int, window: int, stride: int, low: int, out: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per window offset along one axis: the input index each output reads (clamped into the input), and
    whether that index lay inside the input before clamping."""
    rows = []
    for offset in range(window):
        wanted = np.arange(out) * stride + offset - low
        rows.append((np.clip(wanted, 0, size - 1), (wanted >= 0) & (wanted < size)))
    return rows


def _take(x: jax.Array, indices: np.ndarray, axis: int) -> jax.Array:
    """`x` at `indices` along `axis`: a strided slice when they are evenly spaced, a gather otherwise."""
    step = int(indices[1] - indices[0]) if len(indices) > 1 else 1
    if step > 0 and np.array_equal(indices, indices[0] + step * np.arange(len(indices))):
        return lax.slice_in_dim(x, int(indices[0]), int(indices[-1]) + 1, step, axis=axis)
    return jnp.take(x, jnp.asarray(indices, jnp.int32), axis=axis, indices_are_sorted=True, unique_indices=False)


def _windows(x: jax.Array, window: int, stride: int, pads: Pads):
    """Per window offset: `x`'s rows that the outputs read (one view each), and along H and W the index
    lists and in-range masks of `_window_rows`."""
    rows = _window_rows(x.shape[1], window, stride, pads[0][0], _output_size(x.shape[1], window, stride, pads[0]))
    columns = _window_rows(x.shape[2], window, stride, pads[1][0], _output_size(x.shape[2], window, stride, pads[1]))
    return [_take(x, index, 1) for index, _ in rows], rows, columns


def _max_pool_forward(x: jax.Array, window: int, stride: int, pads: Pads) -> jax.Array:
    """Max over the window's rows, then over its columns: reduce_window's values, read without padding."""
    row_views, _, columns = _windows(x, window, stride, pads)
    rows = functools.reduce(jnp.maximum, row_views)
    return functools.reduce(jnp.maximum, [_take(rows, index, 2) for index, _ in columns])


def _argmax_positions(x: jax.Array, window: int, stride: int, pads: Pads) -> jax.Array:
    """Which window position (row-major, int8) select-and-scatter picks: the first maximum, the padding
    counting as -inf (so an over-the-border read, which repeats a border row, counts as -inf too). A
    window of -inf values thus points at its first position, padding or not, as XLA's op does."""
    row_views, rows, columns = _windows(x, window, stride, pads)
    out_shape = (x.shape[0], len(rows[0][0]), len(columns[0][0]), x.shape[3])
    position, best = jnp.zeros(out_shape, jnp.int8), None
    for i, (row_view, (_, row_inside)) in enumerate(zip(row_views, rows, strict=True)):
        for j, (column_index, column_inside) in enumerate(columns):
            values = _take(row_view, column_index, 2)
            inside = row_inside[:, None] & column_inside[None, :]
            if not inside.all():
                values = jnp.where(jnp.asarray(inside)[None, :, :, None], values, -jnp.inf)
            if best is None:
                best = values
                continue
            better = values > best
            best = jnp.where(better, values, best)
            position = jnp.where(better, jnp.int8(i * window + j), position)
    return position


def _route_gradient(grad: jax.Array, position: jax.Array, input_hw: tuple[int, int], window: int, stride: int,
                    pads: Pads) -> jax.Array:
    """The input's gradient: each element sums the gradients of the windows whose recorded position it is.

    Written as a gather, not a scatter: a padded-input coordinate p = q*stride + r (phase r) is covered
    by the windows q - t whose offset r + t*stride lies inside the window, so each phase is one
    elementwise pass over `position` and `grad` read at a few shifts; the phases are then interleaved.
    """
    (low_h, high_h), (low_w, high_w) = pads
    out_h, out_w = position.shape[1], position.shape[2]
    reach = -(-window // stride)  # how many windows along an axis can cover one input element
    phases_h = -(-(input_hw[0] + low_h + high_h) // stride)
    phases_w = -(-(input_hw[1] + low_w + high_w) // stride)
    margins = ((0, 0), (reach - 1, phases_h - out_h), (reach - 1, phases_w - out_w), (0, 0))
    position = jnp.pad(position, margins, constant_values=-1)
    grad = jnp.pad(grad, margins)
    zeros = jnp.zeros((grad.shape[0], phases_h, phases_w, grad.shape[3]), grad.dtype)

    def phase(r_h: int, r_w: int) -> jax.Array:
        total = zeros
        for t_h in range(reach):
            for t_w in range(reach):
                d_h, d_w = r_h + t_h * stride, r_w + t_w * stride
                if d_h >= window or d_w >= window:
                    continue
                shift = (slice(None), slice(reach - 1 - t_h, reach - 1 - t_h + phases_h),
                         slice(reach - 1 - t_w, reach - 1 - t_w + phases_w))
                total = total + jnp.where(position[shift] == d_h * window + d_w, grad[shift], 0)
        return total

    if stride == 1:
        full = phase(0, 0)
    else:
        rows = [jnp.stack([phase(r_h, r_w) for r_w in range(stride)], axis=3) for r_h in range(stride)]
        full = jnp.stack(rows, axis=2).reshape(grad.shape[0], phases_h * stride, phases_w * stride, grad.shape[3])
    return full[:, low_h:low_h + input_hw[0], low_w:low_w + input_hw[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: int, stride: int, pads: Pads) -> jax.Array:
    return _max_pool_forward(x, window, stride, pads)


def _max_pool_fwd(x, window, stride, pads):
    y = _max_pool_forward(x, window, stride, pads)
    position = _argmax_positions(x, window, stride, pads)
    return y, (jnp.zeros((0, *x.shape[1:]), x.dtype), position)  # the empty array carries x's shape and dtype


def _max_pool_bwd(window, stride, pads, residuals, grad):
    empty, position = residuals
    return (_route_gradient(grad, position, empty.shape[1:3], window, stride, pads).astype(empty.dtype),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)

_MAX_POSITIONS = 127  # window positions an int8 can name


def max_pool(x: jax.Array, window: int, stride: int, padding: str) -> jax.Array:
    """Max pooling over H and W of an NHWC tensor ('SAME' or 'VALID', TensorFlow's padding)."""
    pads = lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding)
    if window * window > _MAX_POSITIONS or "max_pool" in _switched_off:
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), *pads, (0, 0)))
    return _max_pool(x, window, stride, tuple(tuple(p) for p in pads))



@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     axis_name: str | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BatchNorm in training over all axes but the last: (output in float32, batch mean, batch variance).

    Flax's values (float32 statistics from E[x] and E[x²] in one pmean, variance clipped at zero, then
    (x - mean)·scale/√(var + ε) + bias). Only the gradient differs in how it is computed: where autodiff
    keeps the centred input and the scaled output gradient as whole tensors and reduces three times,
    this reduces g and g·x (two passes that XLA CPU hands to YNNPACK) and writes the input's gradient in
    one pass: fewer full-size passes over memory, which is what BatchNorm costs on a CPU.
    """
    return _batch_norm_forward(x, scale, bias, epsilon, axis_name)[0]


def _statistics(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    axes = tuple(range(x.ndim - 1))
    moments = jnp.stack([jnp.mean(x, axes), jnp.mean(jnp.square(x), axes)])
    mean, mean_of_squares = lax.pmean(moments, axis_name) if axis_name else moments
    return mean, jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)


def _batch_norm_forward(x, scale, bias, epsilon, axis_name):
    wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, var = _statistics(wide, axis_name)
    inverse_std = lax.rsqrt(var + epsilon)
    y = (wide - mean) * (inverse_std * scale) + bias
    return (y, mean, var), (x, mean, inverse_std, scale)


def _batch_norm_bwd(epsilon, axis_name, residuals, cotangents):
    x, mean, inverse_std, scale = residuals
    grad = cotangents[0]  # the statistics feed only the running averages, which are not differentiated
    wide = x.astype(grad.dtype)
    axes = tuple(range(x.ndim - 1))
    grad_bias = jnp.sum(grad, axes)
    grad_centred = jnp.sum(grad * wide, axes) - mean * grad_bias  # Σ g·(x - mean), without the centred tensor
    count = x.size // x.shape[-1]
    if axis_name:  # the statistics came from every device's batch, so the input's gradient sums over them too
        total_bias, total_centred = lax.psum(jnp.stack([grad_bias, grad_centred]), axis_name)
        count = count * lax.psum(1, axis_name)
    else:
        total_bias, total_centred = grad_bias, grad_centred
    gain = scale * inverse_std
    grad_x = gain * grad - (gain / count) * (total_bias + (wide - mean) * (inverse_std * inverse_std) * total_centred)
    return grad_x.astype(x.dtype), (grad_centred * inverse_std).astype(scale.dtype), grad_bias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_bwd)


class BatchNorm(nn.BatchNorm):
    """Flax's BatchNorm (same variables, same values), with `batch_norm_train`'s gradient in training.

    Initialisation and inference are Flax's own code; so is any option this rewrite does not cover
    (a mask, another feature axis, no scale or bias, the two-pass variance, half-precision reductions).
    """

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        at_call = use_running_average
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        covered = (self.axis in (-1, x.ndim - 1) and self.use_scale and self.use_bias and self.use_fast_variance
                   and self.force_float32_reductions and self.axis_index_groups is None and mask is None)
        if use_running_average or self.is_initializing() or not covered or "batch_norm" in _switched_off:
            return nn.BatchNorm.__call__(self, x, at_call, mask=mask)
        features = (x.shape[-1],)
        running_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        running_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.axis_name)
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype or jnp.result_type(x, scale, bias))


_NHWC = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
    return _xla_conv(x, kernel, pads)


def _conv_fwd(x, kernel, pads):
    return _xla_conv(x, kernel, pads), (x, kernel)


def _conv_bwd(pads, residuals, grad):
    x, kernel = residuals
    grad_x = jax.vjp(lambda v: _xla_conv(v, kernel, pads), x)[1](grad)[0]  # XLA's own input gradient
    return grad_x, _kernel_gradient(x, grad, kernel.shape, pads).astype(kernel.dtype)


def _kernel_gradient(x: jax.Array, grad: jax.Array, kernel_shape: tuple[int, ...], pads: Pads) -> jax.Array:
    """dW[i, j, c, o] = Σ_{n,h,w} x[n, h+i-p, w+j-p, c]·grad[n, h, w, o], without XLA's channel-major copy of x.

    1x1: one matrix product contracting over the N·H·W rows both operands hold contiguously (Eigen reads
    them transposed while packing). kxk: XLA's own form is a convolution whose batch is x's channels and
    whose contracted features are x's images, so x is first copied to (C, H, W, N), an element-by-element
    transpose of the larger operand. Written the other way round, the output gradient plays the image
    (batch O, features N: it is the tensor copied to channel-major, smaller than x wherever C ≥ O, the
    case this is used for) and x the kernel, laid out (H, W, N, C): that copy moves whole rows of C
    contiguous values. Its windows run over negative offsets, so the result comes out flipped in i and j.
    """
    kernel_h, kernel_w = kernel_shape[:2]
    if (kernel_h, kernel_w) == (1, 1):
        rows = x.shape[0] * x.shape[1] * x.shape[2]
        product = lax.dot_general(grad.reshape(rows, grad.shape[3]), x.reshape(rows, x.shape[3]),
                                  (((0,), (0,)), ((), ())))  # (O, C): the small result is what gets transposed
        return product.T.reshape(kernel_shape)
    (low_h, high_h), (low_w, high_w) = pads
    flipped = lax.conv_general_dilated(
        grad, x, (1, 1), ((kernel_h - 1 - low_h, kernel_h - 1 - high_h), (kernel_w - 1 - low_w, kernel_w - 1 - high_w)),
        dimension_numbers=("CHWN", "IHWO", "NHWC"))  # (O, kh, kw, C)
    return jnp.flip(flipped, (1, 2)).transpose(1, 2, 3, 0)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _rewritten(lhs: jax.Array, rhs: jax.Array, pads: Pads) -> bool:
    """Where `_kernel_gradient` measured faster than XLA's (docs/performance.md): a 1x1 convolution without
    padding, or a kxk one whose padding keeps the size ('same') and whose input has at least as many
    channels as its output (else the output gradient, the tensor transposed here, is the larger one)."""
    kernel_h, kernel_w, channels, features = rhs.shape
    if (kernel_h, kernel_w) == (1, 1):
        return pads == ((0, 0), (0, 0))
    same = sum(pads[0]) == kernel_h - 1 and sum(pads[1]) == kernel_w - 1 and min(*pads[0], *pads[1]) >= 0
    return same and channels >= features


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None, preferred_element_type=None) -> jax.Array:
    """`lax.conv_general_dilated` (Flax's `nn.Conv` takes it as `conv_general_dilated`), with the kernel
    gradient of `_kernel_gradient` for stride-1 NHWC convolutions where it is faster; the forward pass and
    the input gradient stay XLA's, and every other convolution is XLA's own."""
    plain = (lhs.ndim == 4 and rhs.ndim == 4 and tuple(window_strides) == (1, 1)
             and lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1))
             and dimension_numbers is not None
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
             and feature_group_count == 1 and batch_group_count == 1 and precision is None
             and preferred_element_type is None and lhs.dtype == rhs.dtype
             and "conv_kernel_gradient" not in _switched_off)
    if plain:
        pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding) if isinstance(padding, str)
                else padding)
        pads = tuple((int(low), int(high)) for low, high in pads)
        if _rewritten(lhs, rhs, pads):
            return _conv(lhs, rhs, pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                    feature_group_count, batch_group_count, precision, preferred_element_type)
