"""The CPU max pooling equals XLA's own op, alone and inside a model that is created with it."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from cnn_flax.models import cpu_kernels, create_model, init_variables

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


def test_a_model_created_with_cpu_kernels_computes_what_plain_linen_computes():
    plain = create_model(dict(name="minivgg", num_classes=4))
    fast = create_model(dict(name="minivgg", num_classes=4), cpu_kernels=True)
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
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, expected_grads)
