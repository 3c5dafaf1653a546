"""--mode=lr_find on the config's own optimizer: the sweep drives it, and on digits the sweep stops at divergence
and the rate it suggests trains."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from run_configs import tiny_config

from cnn_flax.evaluation.lr_find import diverged, smooth, sweep_rates
from cnn_flax.run.lr_find import lr_find, sweep_optimizer
from cnn_flax.run.train import train_and_evaluate


def test_the_sweep_drives_the_config_optimizer_and_keeps_its_parameter_groups():
    """Plain SGD: update i is −rate_i · gradient, and optimizer.lr_multipliers still scale their parameters."""
    config = tiny_config(**{"optimizer.name": "sgd", "optimizer.momentum": 0.0, "optimizer.nesterov": False,
                            "optimizer.lr_multipliers": {"^head/": 0.5}, "lr_find.min_lr": 1e-4,
                            "lr_find.max_lr": 1.0, "lr_find.steps": 5})
    tx = sweep_optimizer(config)
    params = {"body": {"kernel": jnp.ones(3)}, "head": {"kernel": jnp.ones(2)}}
    grads = {"body": {"kernel": jnp.full(3, 2.0)}, "head": {"kernel": jnp.full(2, 2.0)}}
    state = tx.init(params)
    for rate in sweep_rates(1e-4, 1.0, 5):
        updates, state = tx.update(grads, state, params)
        np.testing.assert_allclose(updates["body"]["kernel"], -2.0 * rate, rtol=1e-6)
        np.testing.assert_allclose(updates["head"]["kernel"], -1.0 * rate, rtol=1e-6)
    momentum = sweep_optimizer(tiny_config(**{"optimizer.momentum": 0.9, "lr_find.min_lr": 0.1, "lr_find.max_lr": 1.0,
                                              "lr_find.steps": 2}))
    state = momentum.init(params)
    first, state = momentum.update(grads, state, params)
    second, _ = momentum.update(grads, state, params)  # the config's Nesterov momentum carries into step 2
    np.testing.assert_allclose(first["body"]["kernel"], -0.1 * 2.0 * 1.9, rtol=1e-6)
    np.testing.assert_allclose(second["body"]["kernel"], -1.0 * 2.0 * (0.9 * 1.9 + 1.0), rtol=1e-6)


def _digits(**overrides):
    """The quickstart on digits at 16x16 (MiniVGG, SGD with Nesterov momentum), 24 steps an epoch. BatchNorm's
    running statistics move at momentum 0.9: at Keras's 0.99 the 48 steps of the runs below would leave them near
    their initial values, and the test accuracy at chance whatever the rate."""
    return tiny_config(**{"steps_per_epoch": 24, "eval_steps": -1, "model.bn_momentum": 0.9, **overrides})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lr_find"))
    config = _digits(**{"lr_find.steps": 120})
    return config, workdir, lr_find(config, workdir)


def test_the_sweep_is_geometric_and_stops_where_the_loss_diverges(sweep):
    config, workdir, result = sweep
    with open(os.path.join(workdir, "lr_find.json")) as handle:
        assert json.load(handle) == result
    rates, smoothed = np.asarray(result["rates"]), np.asarray(result["smoothed"], np.float64)
    np.testing.assert_allclose(rates, sweep_rates(1e-7, 10.0, 120)[:len(rates)], rtol=1e-12)
    ratios = rates[1:] / rates[:-1]
    np.testing.assert_allclose(ratios, (10.0 / 1e-7) ** (1 / 119), rtol=1e-9)
    # SGD at rates up to 10 diverges before the end: the sweep stopped at the first step where the smoothed loss
    # passed 4x its lowest value, and not earlier.
    assert len(rates) < 120 and result["stopped"] == f"diverged at step {len(rates)}"
    assert not math.isfinite(smoothed[-1]) or smoothed[-1] > 4.0 * np.nanmin(smoothed)
    assert all(not diverged(smoothed[:i], 4.0) for i in range(1, len(smoothed)))
    np.testing.assert_allclose(smooth([v if v is not None else np.nan for v in result["losses"]], 0.98)[:-1],
                               smoothed[:-1])
    found = result["suggestions"]
    assert result["suggested"] == found["minimum_over_10"] == pytest.approx(found["minimum"] / 10)
    assert rates[0] < found["steepest"] < found["minimum"] < rates[-1]
    assert os.path.getsize(os.path.join(workdir, "lr_find.png")) > 10_000
    with open(os.path.join(workdir, "report.html"), encoding="utf-8") as handle:
        page = handle.read()
    assert 'id="lr-find"' in page and f"{found['minimum_over_10']:.3g}" in page
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # the sweep leaves no checkpoint to resume


@pytest.mark.slow  # two short trainings
def test_the_suggested_rate_trains_and_a_rate_from_the_flat_start_does_not(sweep, tmp_path):
    config, _, result = sweep
    suggested = result["suggested"]
    scores = {}
    for name, rate in (("suggested", suggested), ("too_small", 1e-6)):
        run = _digits(num_epochs=2, **{"optimizer.learning_rate": rate, "schedule.name": "constant"})
        scores[name] = train_and_evaluate(run, str(tmp_path / name)).metrics["rank1"]
    assert scores["suggested"] >= 0.5, scores  # ten classes: chance is 0.1
    assert scores["too_small"] < 0.3, scores


@pytest.mark.slow  # a training, then a sweep
def test_lr_find_starts_from_init_from(sweep, tmp_path):
    """Weights of another run as the start: the first step's loss is that run's, far below a fresh model's."""
    config, _, result = sweep
    trained = str(tmp_path / "trained")
    train_and_evaluate(_digits(num_epochs=2), trained)
    warm = lr_find(_digits(init_from=trained, **{"lr_find.steps": 3}), str(tmp_path / "warm"))
    assert warm["losses"][0] < 0.6 * result["losses"][0]
    assert warm["stopped"] == "completed 3 steps" and warm["suggestions"]["steepest"] is None


@pytest.mark.slow  # compiles the step for pmap
def test_the_sweep_runs_under_pmap(tmp_path):
    result = lr_find(_digits(parallel="pmap", num_devices=0, **{"lr_find.steps": 4}), str(tmp_path))
    assert result["stopped"] == "completed 4 steps" and len(result["losses"]) == 4
    assert all(math.isfinite(v) for v in result["losses"])
    np.testing.assert_allclose(result["rates"], sweep_rates(1e-7, 10.0, 4), rtol=1e-12)
