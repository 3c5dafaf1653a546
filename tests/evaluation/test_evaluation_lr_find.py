"""The learning-rate range test's arithmetic: geometric rates, the debiased moving average, the stop rule, the
suggestions and the settings' errors (the sweep itself is tested in tests/run/test_lr_find.py)."""

import numpy as np
import pytest

from cnn_flax.errors import UserError
from cnn_flax.evaluation.lr_find import check_sweep, diverged, smooth, suggestions, sweep_rates


def test_rates_are_geometric_from_min_to_max():
    rates = sweep_rates(1e-6, 1.0, 7)
    np.testing.assert_allclose(rates, [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)


def test_smoothing_is_a_debiased_moving_average():
    losses = [2.0, 4.0, 1.0]
    b = 0.5
    a1 = (1 - b) * 2.0
    a2 = b * a1 + (1 - b) * 4.0
    a3 = b * a2 + (1 - b) * 1.0
    np.testing.assert_allclose(smooth(losses, b), [a1 / (1 - b), a2 / (1 - b**2), a3 / (1 - b**3)])
    assert smooth([3.0], 0.98)[0] == pytest.approx(3.0)  # debiased: the first value is the first loss
    np.testing.assert_allclose(smooth(losses, 0.0), losses)


def test_the_stop_rule():
    assert not diverged([3.0, 2.0, 1.0, 3.9], 4.0)
    assert diverged([3.0, 2.0, 1.0, 4.1], 4.0)
    assert diverged([3.0, float("nan")], 4.0)
    assert diverged([3.0, float("inf")], 4.0)


def test_suggestions_on_a_curve_with_a_known_answer():
    """Flat, a tanh-shaped fall centred at 1e-3, a minimum at 1e-1, then a climb."""
    rates = sweep_rates(1e-7, 10.0, 161)  # 20 steps a decade
    x = np.log10(rates)
    loss = 3.0 - np.tanh(2.0 * (x + 3.0))
    loss = np.where(x > -1.0, loss[np.argmin(np.abs(x + 1.0))] + 5.0 * (x + 1.0) ** 2, loss)
    found = suggestions(rates, loss)
    assert found["steepest"] == pytest.approx(1e-3, rel=1e-9)
    assert found["minimum"] == pytest.approx(1e-1, rel=1e-9)
    assert found["minimum_over_10"] == pytest.approx(1e-2, rel=1e-9)
    assert suggestions(rates[:3], loss[:3])["steepest"] is None  # no descent measured yet
    empty = suggestions([1e-3], [float("nan")])
    assert empty == {"steepest": None, "minimum": None, "minimum_over_10": None}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("min_lr", 0.0, r"lr_find.min_lr=0 and lr_find.max_lr=10: need 0 < min_lr < max_lr"),
    ("max_lr", 1e-8, r"lr_find.min_lr=1e-07 and lr_find.max_lr=1e-08: need 0 < min_lr < max_lr"),
    ("steps", 1, r"lr_find.steps=1 must be at least 2"),
    ("smoothing", 1.0, r"lr_find.smoothing=1 must be in \[0, 1\)"),
    ("diverge_factor", 1.0, r"lr_find.diverge_factor=1 must be above 1"),
])
def test_bad_settings_are_one_line_naming_the_key(key, value, message):
    settings = dict(min_lr=1e-7, max_lr=10.0, steps=100, smoothing=0.98, diverge_factor=4.0)
    settings[key] = value
    with pytest.raises(UserError, match=f"^{message}"):
        check_sweep(**settings)
