"""optimizer.keras=True against Keras's own SGD and Adam: 20 steps on the same gradients across a rate drop.

The drop is made as the deck makes it (the learning rate set between epochs, here after step 10), so
the comparison covers exactly what plain optax gets wrong: the velocity accumulated at the old rate.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_flax.errors import UserError
from cnn_flax.training.keras_optim import KerasAdamState, KerasSGDState, restore_keras_slots
from cnn_flax.training.optim import build_optimizer, build_schedule
from configs.common import base

keras = pytest.importorskip("keras")

STEPS, DROP_AFTER, SPE = 20, 10, 5
RATES = (0.1, 0.01)
SHAPES = {"kernel": (3, 4), "bias": (4,)}


def gradients(seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}
            for _ in range(STEPS)]


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def keras_run(optimizer, grads: list[dict]) -> list[dict[str, np.ndarray]]:
    variables = {name: keras.Variable(value, name=name) for name, value in initial_params().items()}
    trajectory = []
    for step, grad in enumerate(grads):
        if step == DROP_AFTER:  # what the deck's LearningRateScheduler / ctrl+c restart does
            optimizer.learning_rate = RATES[1]
        optimizer.apply([grad[name] for name in SHAPES], [variables[name] for name in SHAPES])
        trajectory.append({name: np.asarray(v) for name, v in variables.items()})
    return trajectory


def full(options: dict) -> dict:
    """The base config's optimizer section with `options` over it."""
    return {**base("keras_optim").optimizer.to_dict(), **options}


def our_run(options: dict, grads: list[dict]) -> list[dict[str, np.ndarray]]:
    options = full(dict(learning_rate=RATES[0], **options))
    schedule = build_schedule(options, {**base("keras_optim").schedule.to_dict(), "name": "piecewise",
                                        "boundaries": [DROP_AFTER // SPE], "values": list(RATES)}, STEPS // SPE, SPE)
    tx = build_optimizer(options, schedule)
    params = {name: jnp.asarray(value) for name, value in initial_params().items()}
    state = tx.init(params)
    update = jax.jit(tx.update)
    trajectory = []
    for grad in grads:
        updates, state = update({k: jnp.asarray(v) for k, v in grad.items()}, state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        trajectory.append({name: np.asarray(v) for name, v in params.items()})
    return trajectory


def assert_same_walk(ours: list[dict], theirs: list[dict], rtol: float = 1e-6) -> None:
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for name in SHAPES:
            np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=rtol * np.abs(b[name]).max(),
                                       err_msg=f"step {step + 1}, {name}")


CASES = {
    "sgd": (dict(name="sgd", momentum=0.0), lambda: keras.optimizers.SGD(RATES[0])),
    "momentum": (dict(name="sgd", momentum=0.9), lambda: keras.optimizers.SGD(RATES[0], momentum=0.9)),
    "nesterov": (dict(name="sgd", momentum=0.9, nesterov=True),
                 lambda: keras.optimizers.SGD(RATES[0], momentum=0.9, nesterov=True)),
    "adam": (dict(name="adam", b1=0.9, b2=0.999, eps=1e-7), lambda: keras.optimizers.Adam(RATES[0])),
}


@pytest.mark.parametrize("case", CASES)
def test_keras_true_walks_as_keras_across_a_rate_drop(case):
    options, make_keras = CASES[case]
    grads = gradients(seed=len(case))
    theirs = keras_run(make_keras(), grads)
    assert_same_walk(our_run(dict(options, keras=True), grads), theirs)
    if case == "momentum":  # plain optax takes another path after the drop, which is why keras=True exists
        plain = our_run(dict(options, keras=False), grads)
        gap = max(np.abs(plain[-1][n] - theirs[-1][n]).max() / np.abs(theirs[-1][n]).max() for n in SHAPES)
        assert gap > 1e-3


def test_restore_keras_slots_fills_the_state_and_refuses_another_optimizer():
    params = {name: jnp.zeros(shape) for name, shape in SHAPES.items()}
    slots = {"momentum": {name: np.full(shape, 2.0, np.float32) for name, shape in SHAPES.items()}}
    schedule = lambda step: 0.1  # noqa: E731
    state = build_optimizer(full(dict(name="sgd", momentum=0.9, keras=True)), schedule).init(params)
    restored = restore_keras_slots(state, "sgd", 7, slots, "epoch_3.hdf5")
    assert isinstance(restored, KerasSGDState) and int(restored.iterations) == 7
    np.testing.assert_array_equal(restored.momentum["kernel"], slots["momentum"]["kernel"])
    adam_state = build_optimizer(full(dict(name="adam", keras=True)), schedule).init(params)
    assert isinstance(adam_state, KerasAdamState)
    with pytest.raises(UserError, match=r"^epoch_3.hdf5 holds Keras sgd optimizer state but the configured "
                                        r"optimizer is adam; set --config.optimizer.name=sgd$"):
        restore_keras_slots(adam_state, "sgd", 7, slots, "epoch_3.hdf5")
    plain = build_optimizer(full(dict(name="sgd", momentum=0.9)), schedule).init(params)
    with pytest.raises(UserError, match=r"set --config.optimizer.keras=True"):
        restore_keras_slots(plain, "sgd", 7, slots, "epoch_3.hdf5")
    no_momentum = build_optimizer(full(dict(name="sgd", momentum=0.0, keras=True)), schedule).init(params)
    with pytest.raises(UserError, match=r"holds momentum slots but optimizer.momentum=0"):
        restore_keras_slots(no_momentum, "sgd", 7, slots, "epoch_3.hdf5")
