"""What XLA's CPU backend does slowly for these networks, worked around; GPUs and TPUs keep XLA's own ops.

Max pooling: XLA's gradient (select-and-scatter) ran seventy times slower than the pooling (2x2/2) and
three to four times slower than this (3x3/1 and 3x3/2), measured on this project's models (batch 64,
2 cores): the forward pass records which window position held the maximum (int8) and the backward
pass routes the gradient there with strided adds. Models use it when created with `cpu_kernels=True`
(the experiment does that on a CPU backend). Convolutions need nothing here once
`cnn_flax.runtime.tune_cpu` has moved them from YNNPACK to XLA's Eigen kernels.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


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
    pads = lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding)
    return _max_pool(x, window, stride, tuple(tuple(p) for p in pads))
