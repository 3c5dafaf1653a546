"""A zoo network's variables without running its initialiser: their shapes, or random numpy weights.

Initialising the real way compiles and runs the whole network once more (GoogLeNet at 224x224: four seconds
from an empty compile cache). A weight file that gives every weight needs only the shapes; tests that compare
two computations of one network take any weights.
"""

import math

import jax
import numpy as np

from cnn_flax.models import init_traced


def variable_shapes(model, input_shape: tuple[int, ...]) -> dict:
    """Every collection's shapes and dtypes (`jax.ShapeDtypeStruct` leaves), traced, never compiled."""
    return jax.eval_shape(lambda: init_traced(model, tuple(input_shape), jax.random.key(0)))


def random_variables(model, size: int, seed: int, first_kernel_scale: float = 1.0) -> dict:
    """Every collection but `intermediates` (GoogLeNet's auxiliary heads included) for `size`x`size` RGB
    images: kernels He-scaled by fan-in so that a softmax is not saturated, BatchNorm statistics and scales
    near 1, small biases. `first_kernel_scale` scales the RGB-in kernels (pixel-scale inputs)."""
    shapes = variable_shapes(model, (size, size, 3))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            scale = first_kernel_scale if leaf.ndim == 4 and leaf.shape[-2] == 3 else 1.0  # RGB in: the first
            return rng.normal(0, scale * math.sqrt(1.0 / math.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if name == "scale":
            return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
        return (0.05 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, {k: v for k, v in shapes.items() if k != "intermediates"})
