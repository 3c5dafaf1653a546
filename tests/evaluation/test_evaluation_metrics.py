"""Rank-k accuracy against hand-counted examples, including ties, NaN rows and k >= number of classes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import top_k_accuracy_score

from cnn_flax.errors import UserError
from cnn_flax.evaluation.metrics import in_top_k, rank_accuracies, rank_k_accuracy

NAN = float("nan")

# Each row's comment gives the number of classes scoring strictly higher than the label's class.
SCORES = np.array(
    [
        [0.1, 0.4, 0.4, 0.1],  # label 2: tied for first with class 1 -> 0 higher
        [0.5, 0.2, 0.2, 0.1],  # label 1: class 0 higher, tie with class 2 -> 1 higher
        [0.3, 0.3, 0.3, 0.1],  # label 3: three classes higher -> 3
        [0.0, 0.0, 0.0, 0.0],  # label 0: all tied -> 0 higher
        [1.0, NAN, 0.0, 0.0],  # label 0: a NaN in the row -> always wrong
        [2.0, 1.0, 0.0, -1.0],  # label 3: last -> 3 higher
    ]
)
LABELS = np.array([2, 1, 3, 0, 0, 3])
# Hand-derived: in the top k iff (number higher) < k, and never for the NaN row.
EXPECTED = {
    1: [True, False, False, True, False, False],
    2: [True, True, False, True, False, False],
    3: [True, True, False, True, False, False],
    4: [True, True, True, True, False, True],
    10: [True, True, True, True, False, True],
}


@pytest.mark.parametrize("k", sorted(EXPECTED))
def test_in_top_k_matches_hand_count_with_ties(k):
    result = in_top_k(SCORES, LABELS, k)
    assert isinstance(result, np.ndarray)
    assert result.tolist() == EXPECTED[k]


@pytest.mark.parametrize("k", sorted(EXPECTED))
def test_rank_k_accuracy_is_the_fraction_of_hits(k):
    assert rank_k_accuracy(SCORES, LABELS, k) == pytest.approx(sum(EXPECTED[k]) / 6)
    assert isinstance(rank_k_accuracy(SCORES, LABELS, k), float)


def test_rank_accuracies_caps_k_at_number_of_classes():
    # 4 classes: rank-5 is rank-4, i.e. every row except the NaN one.
    assert rank_accuracies(SCORES, LABELS) == {"rank1": 2 / 6, "rank5": 5 / 6}
    assert rank_accuracies(SCORES, LABELS, ks=(1, 2, 3)) == {"rank1": 2 / 6, "rank2": 3 / 6, "rank3": 3 / 6}


def test_in_top_k_under_jit_equals_numpy():
    jitted = jax.jit(in_top_k, static_argnames="k")
    for k in EXPECTED:
        on_device = jitted(jnp.asarray(SCORES, jnp.float32), jnp.asarray(LABELS), k=k)
        assert isinstance(on_device, jax.Array)
        assert np.asarray(on_device).tolist() == in_top_k(SCORES, LABELS, k).tolist()
    traced_k = jax.jit(in_top_k)(jnp.asarray(SCORES), jnp.asarray(LABELS), 2)
    assert np.asarray(traced_k).tolist() == EXPECTED[2]


def test_without_ties_agrees_with_scikit_learn_top_k():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(300, 7))
    labels = rng.integers(0, 7, size=300)
    for k in (1, 2, 5):
        expected = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(7))
        assert rank_k_accuracy(scores, labels, k) == pytest.approx(expected)
    assert rank_k_accuracy(scores, labels, 1) == pytest.approx(np.mean(scores.argmax(1) == labels))


def test_logits_and_probabilities_give_the_same_ranks():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 5))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 5, size=50)
    ks = (1, 2, 3)
    assert rank_accuracies(logits, labels, ks) == rank_accuracies(probabilities, labels, ks)


def test_label_outside_the_classes_counts_as_wrong():
    scores = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert in_top_k(scores, np.array([2, -1]), 5).tolist() == [False, False]


def test_bad_inputs_are_rejected():
    with pytest.raises(UserError, match="zero examples"):
        rank_k_accuracy(np.zeros((0, 3)), np.zeros((0,), int), 1)
    with pytest.raises(ValueError, match="at least 1"):
        in_top_k(SCORES, LABELS, 0)
    with pytest.raises(ValueError, match="labels must be"):
        in_top_k(SCORES, LABELS[:3], 1)
    with pytest.raises(ValueError, match=r"\[examples, classes\]"):
        rank_accuracies(SCORES[0], LABELS[:1])
