"""Schedules give the deck's rates at the boundary epochs, and print the deck's plans."""

import importlib
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_flax.errors import UserError
from cnn_flax.training.optim import build_optimizer, build_schedule, l2_penalty, learning_rate_plan
from configs.common import base

SPE = 7  # steps per epoch; any value works, the schedules are written in epochs


def _config(name, arg=None):
    module = importlib.import_module(f"configs.{name}")
    return module.get_config(arg) if arg else module.get_config()


def _optimizer(**values):
    """The optimizer section of base() with `values` changed (every key a builder reads is there)."""
    section = base("test").optimizer
    section.update(values)
    return section


def _schedule(**values):
    section = base("test").schedule
    section.update(values)
    return section


def _rate_at_epoch(config, epoch):
    """The rate during 1-based `epoch` (its first and last step)."""
    schedule = build_schedule(config.optimizer, config.schedule, config.num_epochs, SPE)
    first, last = float(schedule((epoch - 1) * SPE)), float(schedule(epoch * SPE - 1))
    assert first == pytest.approx(last)
    return first


@pytest.mark.parametrize("name,expected", [
    ("deeper_sgd_baseline", {1: 1e-3, 40: 1e-3}),
    ("deeper_exp1_sgd", {1: 1e-2, 25: 1e-2, 26: 1e-3, 35: 1e-3, 36: 1e-4, 65: 1e-4}),
    ("deeper_exp2_adam", {1: 1e-3, 20: 1e-3, 21: 1e-4, 30: 1e-4, 31: 1e-5, 40: 1e-5}),
    ("deeper_adam", {1: 1e-3, 40: 1e-3, 41: 1e-4, 60: 1e-4, 61: 1e-5, 70: 1e-5}),
])
def test_deeper_googlenet_schedules_at_boundary_epochs(name, expected):
    config = _config(name)
    for epoch, rate in expected.items():
        assert _rate_at_epoch(config, epoch) == pytest.approx(rate, rel=1e-6)


@pytest.mark.parametrize("name,plan", [
    ("deeper_sgd_baseline", ["epochs 1-40: lr 0.001"]),
    ("deeper_exp1_sgd", ["epochs 1-25: lr 0.01", "epochs 26-35: lr 0.001", "epochs 36-65: lr 0.0001"]),
    ("deeper_exp2_adam", ["epochs 1-20: lr 0.001", "epochs 21-30: lr 0.0001", "epochs 31-40: lr 1e-05"]),
    ("deeper_adam", ["epochs 1-40: lr 0.001", "epochs 41-60: lr 0.0001", "epochs 61-70: lr 1e-05"]),
])
def test_plans_print_the_deck_tables(name, plan):
    config = _config(name)
    assert learning_rate_plan(config.optimizer, config.schedule, config.num_epochs, SPE) == plan


def test_minigooglenet_linear_decay_starts_at_5e_3_and_reaches_epoch_70():
    config = _config("minigooglenet_cifar10")
    plan = learning_rate_plan(config.optimizer, config.schedule, config.num_epochs, SPE)
    assert len(plan) == 70
    assert plan[0] == "epoch 1: lr 0.005"
    assert plan[35] == "epoch 36: lr 0.0025"  # the book's poly_decay sees 0-based epochs: 1 - 35/70
    assert plan[-1].startswith("epoch 70: lr ")
    assert float(plan[-1].split("lr ")[1]) == pytest.approx(0.005 / 70, rel=1e-5)


def test_keras_time_decay_is_per_iteration():
    config = _config("minivgg_cifar10")
    schedule = build_schedule(config.optimizer, config.schedule, config.num_epochs, 782)
    for step in (0, 1, 781, 782 * 40):
        assert float(schedule(step)) == pytest.approx(0.01 / (1 + 0.01 / 40 * step), rel=1e-6)
    plan = learning_rate_plan(config.optimizer, config.schedule, config.num_epochs, 782)
    assert len(plan) == 40 and plan[1].startswith("epoch 2: lr ")
    assert float(plan[1].split("lr ")[1]) == pytest.approx(0.01 / (1 + 0.01 / 40 * 782), rel=1e-5)


def test_optimizers_by_name_and_errors():
    config = _config("deeper_adam")
    schedule = build_schedule(config.optimizer, config.schedule, config.num_epochs, SPE)
    tx = build_optimizer(config.optimizer, schedule)
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -1e-3 * np.ones(3), rtol=1e-3)  # Adam's first step is ~lr
    with pytest.raises(UserError, match="optimizer.name='rmsprop' is not known; use one of sgd, adam, adamw, lars"):
        build_optimizer(_optimizer(name="rmsprop", learning_rate=0.1), schedule)
    with pytest.raises(UserError, match="schedule.name='cosine' is not known"):
        build_schedule(_optimizer(learning_rate=0.1), _schedule(name="cosine"), 10, SPE)
    with pytest.raises(UserError, match="one more entry than schedule.boundaries"):
        build_schedule(_optimizer(learning_rate=0.1), dict(_schedule().to_dict(), name="piecewise", boundaries=(5,),
                                                           values=(1.0,)), 10, SPE)


def test_nesterov_sgd_matches_optax_reference():
    schedule = build_schedule(_optimizer(learning_rate=0.1), _schedule(), 1, 1)
    ours = build_optimizer(_optimizer(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True), schedule)
    reference = optax.sgd(0.1, momentum=0.9, nesterov=True)
    params, grads = {"w": jnp.arange(3.0)}, {"w": jnp.asarray([0.5, -1.0, 2.0])}
    a, b = ours.init(params), reference.init(params)
    for _ in range(3):
        ua, a = ours.update(grads, a, params)
        ub, b = reference.update(grads, b, params)
        np.testing.assert_allclose(ua["w"], ub["w"], rtol=1e-6)


def test_l2_penalty_is_keras_style_on_kernels_only():
    params = {"conv": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.ones(2)},
              "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)}, "dense": {"kernel": jnp.ones(3)}}
    assert float(l2_penalty(params, 0.0002)) == pytest.approx(0.0002 * (4 * 4.0 + 3 * 1.0))
    assert float(l2_penalty(params, 0.0)) == 0.0


def _written_out(name: str, schedule: dict, base_rate: float, num_epochs: int, step: int) -> float:
    """Each schedule's definition in float64, independent of optax and of our code."""
    epoch = step // SPE
    if name == "polynomial":
        return base_rate * (1 - epoch / num_epochs) ** schedule["power"]
    if name == "exponential":
        periods = step / (schedule["decay_epochs"] * SPE)
        return base_rate * schedule["decay_rate"] ** (math.floor(periods) if schedule["staircase"] else periods)
    if name == "warmup_cosine":
        start = round(schedule["warmup_epochs"] * SPE)
        progress = min(max((step - start) / (num_epochs * SPE - start), 0.0), 1.0)
        rate = schedule["final_rate"] + (base_rate - schedule["final_rate"]) * 0.5 * (1 + math.cos(math.pi * progress))
        return rate * min(1.0, (step + 1) / start) if start else rate
    if name == "piecewise":
        return schedule["values"][sum(epoch >= b for b in schedule["boundaries"])]
    return base_rate


@pytest.mark.parametrize("name, values", [
    ("polynomial", dict(power=1.0)),
    ("polynomial", dict(power=2.5)),
    ("exponential", dict(decay_rate=0.96, decay_epochs=2.0, staircase=True)),
    ("exponential", dict(decay_rate=0.5, decay_epochs=1.5, staircase=False)),
    ("warmup_cosine", dict(warmup_epochs=2.0, final_rate=1e-5)),
    ("warmup_cosine", dict(warmup_epochs=0.0, final_rate=0.0)),
    ("piecewise", dict(boundaries=(3, 6), values=(1e-2, 1e-3, 1e-4))),
    ("constant", dict()),
])
def test_every_schedule_equals_its_definition_at_every_step_of_the_plan(name, values):
    """optax builds polynomial, exponential, cosine and constant; each equals the formula at every step."""
    num_epochs, base_rate = 9, 0.05
    schedule = build_schedule(_optimizer(learning_rate=base_rate), _schedule(name=name, **values), num_epochs, SPE)
    section = dict(_schedule(name=name, **values).to_dict())
    for step in range(num_epochs * SPE):
        expected = _written_out(name, section, base_rate, num_epochs, step)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), (name, step)  # float32


def test_every_schedule_key_has_its_default():
    """--config.schedule.KEY=... works in every config: each key a schedule reads exists in base()."""
    section = base("test").schedule
    for key in ("name", "warmup_epochs", "boundaries", "values", "decay", "power", "final_rate", "decay_rate",
                "decay_epochs", "staircase"):
        assert key in section, key
