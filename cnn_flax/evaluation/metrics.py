"""Rank-k accuracy, the deck's headline numbers for Tiny ImageNet (rank-1 30.23%, rank-5 54.34%).

One tie rule everywhere, the one `tf.math.in_top_k` uses: the true label is in the top k iff fewer than k
classes score strictly higher than it. Ties at the boundary therefore count in the label's favour, and the
answer never depends on how a sort happens to order equal scores (an argsort-based top-k would). A row that
contains a NaN score is counted wrong, so a diverged model cannot look accurate; infinities are ordinary
values. `in_top_k` is written against the array API that numpy and `jax.numpy` share: given jax arrays (or
tracers, inside `jax.jit`) it runs on the device, given numpy arrays it stays on the host in the scores'
own precision (casting float64 to float32 on the way to a device could create ties that are not there).
Malformed arrays are bugs in the caller (ValueError); an empty evaluation set is something a user can fix
(UserError).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn_flax.errors import UserError

Array = np.ndarray | jax.Array


def _check_shapes(scores: Array, labels: Array) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be [examples, classes], got shape {tuple(scores.shape)}")
    if labels.shape != scores.shape[:1]:
        raise ValueError(
            f"labels must be [examples] matching scores {tuple(scores.shape)}, got {tuple(labels.shape)}"
        )


def _rank_of_label(scores: Array, labels: Array) -> tuple[Array, Array]:
    """Per example: how many classes score strictly higher than the true label, and whether the row is
    valid (no NaN score, label inside [0, C)). The label is in the top k iff valid and that count < k."""
    xp = jnp if isinstance(scores, jax.Array) or isinstance(labels, jax.Array) else np
    scores = xp.asarray(scores)
    labels = xp.asarray(labels)
    _check_shapes(scores, labels)
    num_classes = scores.shape[1]
    valid_label = (labels >= 0) & (labels < num_classes)
    safe_labels = xp.clip(labels, 0, num_classes - 1).astype(xp.int32)
    label_scores = xp.take_along_axis(scores, safe_labels[:, None], axis=1)
    above = xp.sum(scores > label_scores, axis=1)
    valid = valid_label & ~xp.any(xp.isnan(scores), axis=1)
    return above, valid


def in_top_k(scores: Array, labels: Array, k: int) -> Array:
    """Whether each example's label is among the k best of its scores (logits or probabilities).

    scores: [N, C] float; labels: [N] int; returns bool [N], a jax array if either input is one, else a
    numpy array. Ties follow `tf.math.in_top_k` (see the module docstring); k >= C makes every valid row
    correct. Usable inside `jax.jit`, with k static or traced.
    """
    if isinstance(k, int | np.integer) and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    above, valid = _rank_of_label(scores, labels)
    return valid & (above < k)


def _as_host_arrays(scores: Array, labels: Array) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores), np.asarray(labels)
    _check_shapes(scores, labels)
    if scores.shape[0] == 0:
        raise UserError("cannot compute accuracy over zero examples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return scores, labels


def rank_k_accuracy(scores: Array, labels: Array, k: int) -> float:
    """Fraction in [0, 1] of examples whose label is in the top k (same tie rule as `in_top_k`)."""
    scores, labels = _as_host_arrays(scores, labels)
    return float(np.mean(in_top_k(scores, labels, k)))


def rank_accuracies(scores: Array, labels: Array, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{'rank1': ..., 'rank5': ...} as fractions; each k is capped at the number of classes.

    The key keeps the requested k ('rank5' on a 3-class problem is 1.0 for every valid row), so reports
    for different datasets have the same fields.
    """
    scores, labels = _as_host_arrays(scores, labels)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {tuple(ks)}")
    above, valid = _rank_of_label(scores, labels)
    num_classes = scores.shape[1]
    return {f"rank{k}": float(np.mean(valid & (above < min(k, num_classes)))) for k in ks}
