"""The learning-rate range test's arithmetic and figure: rates, smoothing, the stop rule and the suggestions.

Smith's test (2017) trains for a few hundred steps while the rate grows geometrically from tiny to huge, and
reads the loss against the rate: flat while the rate is too small to matter, falling where it is useful,
exploding where it is too large. The raw per-step loss is noisy (one batch each), so decisions use an
exponential moving average with the bias correction of Adam's moments (without it the first values are pulled
towards zero). Two suggestions are reported, as fastai does: the rate where the smoothed loss falls fastest
(steepest descent against log-rate) and a tenth of the rate at the smoothed loss's minimum (the minimum itself
is already at the edge of divergence). This module takes arrays; cnn_flax/run/lr_find.py runs the sweep.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.evaluation.files import new_figure, save_figure


def check_sweep(min_lr: float, max_lr: float, steps: int, smoothing: float, diverge_factor: float) -> None:
    """The lr_find.* settings, each with a one-line error naming the key."""
    if not 0 < min_lr < max_lr:
        raise UserError(f"lr_find.min_lr={min_lr:g} and lr_find.max_lr={max_lr:g}: need 0 < min_lr < max_lr "
                        "(e.g. 1e-7 and 10)")
    if steps < 2:
        raise UserError(f"lr_find.steps={steps} must be at least 2 (a few hundred is usual)")
    if not 0 <= smoothing < 1:
        raise UserError(f"lr_find.smoothing={smoothing:g} must be in [0, 1) (0: no smoothing; 0.98 is usual)")
    if diverge_factor <= 1:
        raise UserError(f"lr_find.diverge_factor={diverge_factor:g} must be above 1 (the sweep stops when the "
                        "smoothed loss exceeds this multiple of its lowest value; 4 is usual)")


def sweep_rates(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """The rate of each step: min_lr · (max_lr/min_lr)^(i/(steps−1)), from min_lr to max_lr inclusive."""
    return min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))


def smooth(losses: Sequence[float], smoothing: float) -> np.ndarray:
    """Debiased exponential moving average: avg_i = β·avg_{i−1} + (1−β)·loss_i, reported as avg_i / (1 − β^(i+1))."""
    out, average = [], 0.0
    for i, loss in enumerate(losses):
        average = smoothing * average + (1.0 - smoothing) * float(loss)
        out.append(average / (1.0 - smoothing ** (i + 1)))
    return np.asarray(out, np.float64)


def diverged(smoothed: Sequence[float], factor: float) -> bool:
    """The stop rule after each step: a non-finite loss, or the smoothed loss above `factor` x its lowest so far."""
    latest = float(smoothed[-1])
    return not math.isfinite(latest) or latest > factor * float(np.min(smoothed))


def suggestions(rates: Sequence[float], smoothed: Sequence[float]) -> dict[str, float | None]:
    """{'steepest': the rate where the smoothed loss falls fastest against log(rate), before its minimum;
    'minimum': the rate at the smoothed loss's minimum; 'minimum_over_10': a tenth of it}.

    None where the sweep is too short to say (the minimum within its first tenth: no descent to measure).
    """
    rates, smoothed = np.asarray(rates, np.float64), np.asarray(smoothed, np.float64)
    finite = np.isfinite(smoothed)
    if not finite.any():
        return {"steepest": None, "minimum": None, "minimum_over_10": None}
    lowest = int(np.argmin(np.where(finite, smoothed, np.inf)))
    # The slope over a window of ±k steps (one step's difference follows the noise the average let through),
    # from the end of the first tenth of the sweep (where the average still rests on a few batches) to the minimum.
    k = max(1, len(smoothed) // 20)
    first = max(k, len(smoothed) // 10)
    steepest = None
    if lowest - k > first:
        centres = np.arange(first, lowest - k + 1)
        log_rates = np.log(rates)
        slope = (smoothed[centres + k] - smoothed[centres - k]) / (log_rates[centres + k] - log_rates[centres - k])
        steepest = float(rates[centres[int(np.argmin(slope))]])
    return {"steepest": steepest, "minimum": float(rates[lowest]), "minimum_over_10": float(rates[lowest] / 10)}


def plot_lr_find(result: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Smoothed loss (and the raw loss, faint) against the rate on a log axis, the suggestions marked."""
    rates = np.asarray(result["rates"], np.float64)
    figure = new_figure(figsize=(8, 5), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(rates, result["losses"], color="#9e9e9e", linewidth=0.8, alpha=0.6, label="loss of each step")
    ax.plot(rates, result["smoothed"], color="#1565c0", linewidth=2, label="smoothed loss")
    marks = (("steepest", "steepest descent", "#2e7d32"), ("minimum_over_10", "minimum / 10", "#c62828"))
    for key, label, colour in marks:
        rate = result["suggestions"].get(key)
        if rate is not None:
            ax.axvline(rate, color=colour, linestyle="--", linewidth=1.2, label=f"{label}: {rate:.3g}")
    ax.set_xscale("log")
    smoothed = np.asarray(result["smoothed"], np.float64)
    finite = smoothed[np.isfinite(smoothed)]
    if finite.size:  # the start of the explosion is shown, not all of it: it would flatten the useful part
        low, start = float(finite.min()), float(finite[0])
        span = max(start - low, 1e-3)
        raw = np.asarray([v for v in result["losses"] if v is not None and math.isfinite(v)], np.float64)
        bottom = min(low, float(raw.min())) if raw.size else low  # each step's loss dips below the average
        ax.set_ylim(bottom - 0.05 * span, max(min(float(finite.max()), start + span), start) + 0.05 * span)
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss",
           title=f"Learning-rate range test: {len(rates)} steps, {result['stopped']}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    save_figure(figure, path, dpi=100)
