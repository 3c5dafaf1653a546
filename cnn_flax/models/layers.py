"""Blocks shared by every architecture: the deck's conv_module, its inception variants, pooling, LRN.

Kept in one place so that the deck's two extensions (CONV→ACT→BN order, ELU) switch the same way in
every model, and so that the Keras defaults the deck's results rely on (Glorot-uniform kernels, zero
biases, BatchNorm momentum 0.99 / epsilon 1e-3, 'same' padding as TensorFlow pads) are written once.
Pooling layers are modules rather than functions so that summaries list them like Keras does and so
that an input too small for a window fails with a message instead of an empty tensor.

Two fields are set by whoever runs a model, never by a config: `bn_axis_name` (under `jax.pmap`, the
device axis BatchNorm averages its batch statistics over, as in Flax's own examples; `jax.jit` over a
mesh needs nothing) and `cpu_kernels` (max pooling, BatchNorm and convolution kernel gradients written for
XLA's CPU backend, see `cpu_kernels.py`). Both default to plain Linen.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_flax.errors import UserError
from cnn_flax.models.batchnorm_module import BatchNormModule
from cnn_flax.models.cpu_kernels import BatchNorm as CpuBatchNorm
from cnn_flax.models.cpu_kernels import conv_general_dilated as cpu_conv
from cnn_flax.models.cpu_kernels import max_pool as cpu_max_pool

Dtype = Any
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"relu": nn.relu, "elu": nn.elu}
BN_ORDERS = ("conv_bn_act", "conv_act_bn")
keras_kernel_init = nn.initializers.glorot_uniform()


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise UserError(f"model.activation={name!r} is not known; use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def check_bn_order(order: str) -> str:
    if order not in BN_ORDERS:
        raise UserError(f"model.bn_order={order!r} is not known; use one of {', '.join(BN_ORDERS)}")
    return order


def keras_batch_norm(train: bool, dtype: Dtype, axis_name: str | None = None, name: str | None = None,
                     cpu_kernels: bool = False, momentum: float = 0.99) -> nn.BatchNorm:
    """BatchNorm with Keras's defaults, statistics kept in float32 whatever the compute dtype."""
    kind = CpuBatchNorm if cpu_kernels else nn.BatchNorm
    return kind(use_running_average=not train, momentum=momentum, epsilon=1e-3, dtype=dtype,
                        param_dtype=jnp.float32, axis_name=axis_name, name=name)


def keras_conv(features: int, kernel: int, strides: int = 1, padding: str = "SAME", dtype: Dtype = jnp.float32,
               name: str | None = None, cpu_kernels: bool = False) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding,
                   kernel_init=keras_kernel_init, dtype=dtype, name=name,
                   conv_general_dilated=cpu_conv if cpu_kernels else None)


def keras_dense(features: int, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Dense:
    return nn.Dense(features, kernel_init=keras_kernel_init, dtype=dtype, name=name)


def norm_and_activate(x: jax.Array, *, order: str, activation: str, train: bool, dtype: Dtype,
                      bn_axis_name: str | None = None, cpu_kernels: bool = False, momentum: float = 0.99,
                      name: str) -> jax.Array:
    """The tail of a conv_module or dense block: BN then activation, or activation then BN."""
    act = activation_fn(activation)
    bn = keras_batch_norm(train, dtype, bn_axis_name, name=name, cpu_kernels=cpu_kernels, momentum=momentum)
    return act(bn(x)) if check_bn_order(order) == "conv_bn_act" else bn(act(x))


class ConvModule(BatchNormModule):
    """The deck's conv_module: CONV then BN and activation in the chosen order (or CONV→ACT without BN)."""

    features: int
    kernel: int
    strides: int = 1
    padding: str = "SAME"
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = keras_conv(self.features, self.kernel, self.strides, self.padding, self.dtype, name="conv",
                       cpu_kernels=self.cpu_kernels)(x)
        if not self.batch_norm:
            return activation_fn(self.activation)(x)
        return norm_and_activate(x, order=self.bn_order, activation=self.activation, train=train,
                                 dtype=self.dtype, bn_axis_name=self.bn_axis_name, cpu_kernels=self.cpu_kernels,
                                 momentum=self.bn_momentum, name="bn")


def _check_window(x: jax.Array, window: int, layer: str) -> None:
    height, width = x.shape[-3], x.shape[-2]
    if height < window or width < window:
        raise UserError(
            f"{layer}: a {height}x{width} feature map is smaller than its {window}x{window} window; "
            "the input image is too small for this model (use a larger data.image_size or model.input_shape)")


def _pooled(layer: "MaxPool | AvgPool", x: jax.Array, pool: Callable[..., jax.Array]) -> jax.Array:
    """`pool(x, window, strides, padding)`, after checking that a 'VALID' window fits the feature map."""
    if layer.padding == "VALID":
        _check_window(x, layer.window, layer.name or type(layer).__name__)
    return pool(x, layer.window, layer.strides, layer.padding)


# Keywords in both poolings: ONNX conversion (jax2onnx) swaps in versions that take only these by name.
def _xla_max_pool(x: jax.Array, window: int, strides: int, padding: str) -> jax.Array:
    return nn.max_pool(x, window_shape=(window, window), strides=(strides, strides), padding=padding)


def _keras_avg_pool(x: jax.Array, window: int, strides: int, padding: str) -> jax.Array:
    """Like Keras, padded positions are left out of the mean."""
    return nn.avg_pool(x, window_shape=(window, window), strides=(strides, strides), padding=padding,
                       count_include_pad=False)


class MaxPool(nn.Module):
    window: int
    strides: int
    padding: str = "VALID"
    cpu_kernels: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _pooled(self, x, cpu_max_pool if self.cpu_kernels else _xla_max_pool)


class AvgPool(nn.Module):
    window: int
    strides: int
    padding: str = "VALID"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _pooled(self, x, _keras_avg_pool)


class GlobalAvgPool(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.mean(x, axis=(-3, -2))


class GlobalMaxPool(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.max(x, axis=(-3, -2))


class Flatten(nn.Module):
    """Row-major flatten of H, W, C: the same order as Keras's Flatten on channels-last tensors."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape((x.shape[0], -1))


class LocalResponseNorm(nn.Module):
    """Cross-channel local response normalisation: x / (bias + alpha * sum_window x^2) ** beta.

    VGG's A-LRN uses Krizhevsky et al.'s constants (bias 2, alpha 1e-4 over a 5-channel window);
    GoogLeNet's Caffe definition divides alpha by the window size and uses bias 1.
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    bias: float = 2.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        squared = jnp.square(x.astype(jnp.float32))
        half = self.size // 2
        padded = jnp.pad(squared, [(0, 0)] * (x.ndim - 1) + [(half, self.size - 1 - half)])
        window_sum = jax.lax.reduce_window(padded, 0.0, jax.lax.add, (1,) * (x.ndim - 1) + (self.size,),
                                           (1,) * x.ndim, "VALID")
        scale = (self.bias + self.alpha * window_sum) ** self.beta
        return (x / scale).astype(x.dtype)


class Inception(BatchNormModule):
    """GoogLeNet's four-branch module, columns in the order of the paper's table.

    (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj): a 1x1 branch, 1x1→3x3, 1x1→5x5, and a
    3x3/1 max pool followed by a 1x1 projection, concatenated along channels.
    """

    filters: tuple[int, int, int, int, int, int]
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = self.filters

        def conv(features: int, kernel: int, name: str) -> ConvModule:
            return ConvModule(features, kernel, batch_norm=self.batch_norm, name=name, **self.conv_options)

        branch1 = conv(n1x1, 1, "1x1")(x, train)
        branch2 = conv(n3x3, 3, "3x3")(conv(n3x3_reduce, 1, "3x3_reduce")(x, train), train)
        branch3 = conv(n5x5, 5, "5x5")(conv(n5x5_reduce, 1, "5x5_reduce")(x, train), train)
        pooled = MaxPool(3, 1, "SAME", cpu_kernels=self.cpu_kernels, name="pool")(x)
        branch4 = conv(pool_proj, 1, "pool_proj")(pooled, train)
        return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class SmallInception(BatchNormModule):
    """MiniGoogLeNet's inception (Zhang et al.): a 1x1 and a 3x3 conv_module side by side."""

    n1x1: int
    n3x3: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        branch1 = ConvModule(self.n1x1, 1, name="1x1", **self.conv_options)(x, train)
        branch2 = ConvModule(self.n3x3, 3, name="3x3", **self.conv_options)(x, train)
        return jnp.concatenate([branch1, branch2], axis=-1)


class Downsample(BatchNormModule):
    """MiniGoogLeNet's downsample: a 3x3/2 'valid' conv_module beside a 3x3/2 max pool."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = ConvModule(self.features, 3, strides=2, padding="VALID", name="3x3", **self.conv_options)
        _check_window(x, 3, self.name or "downsample")
        return jnp.concatenate([conv(x, train), MaxPool(3, 2, cpu_kernels=self.cpu_kernels, name="pool")(x)], axis=-1)
