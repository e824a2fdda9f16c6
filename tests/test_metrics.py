"""micro-F1 / accuracy against scikit-learn on random predictions."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from recon.models.train import metrics


@pytest.mark.parametrize("negative_id", [0, 7, 12])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_micro_f1_matches_sklearn_with_negative_class(negative_id: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_labels = 13
    golds = rng.integers(0, n_labels, size=500)
    # Make the negative class frequent, as in SemEval/TACRED, and predictions half right.
    golds[rng.random(500) < 0.4] = negative_id
    preds = np.where(rng.random(500) < 0.5, golds, rng.integers(0, n_labels, size=500))
    labels = [i for i in range(n_labels) if i != negative_id]
    expected = f1_score(golds, preds, average="micro", labels=labels)
    assert metrics.micro_f1(preds, golds, negative_id) == pytest.approx(expected, abs=1e-12)
    out = metrics.compute("micro_f1", preds, golds, negative_id)
    assert out["score"] == pytest.approx(expected, abs=1e-12)
    assert out["precision"] == pytest.approx(precision_score(golds, preds, average="micro", labels=labels))
    assert out["recall"] == pytest.approx(recall_score(golds, preds, average="micro", labels=labels))
    assert out["accuracy"] == pytest.approx(accuracy_score(golds, preds))


def test_negative_id_is_not_assumed_to_be_zero() -> None:
    golds = [0, 0, 1, 2, 2]
    preds = [0, 1, 1, 2, 0]
    # Label 2 is the negative class: only labels 0 and 1 count.
    assert metrics.micro_f1(preds, golds, 2) == pytest.approx(
        f1_score(golds, preds, average="micro", labels=[0, 1]))
    assert metrics.micro_f1(preds, golds, 2) != pytest.approx(metrics.micro_f1(preds, golds, 0))


def test_without_negative_class_micro_f1_is_accuracy() -> None:
    rng = np.random.default_rng(3)
    golds = rng.integers(0, 13, size=300)
    preds = np.where(rng.random(300) < 0.6, golds, rng.integers(0, 13, size=300))
    expected = f1_score(golds, preds, average="micro", labels=list(range(13)))
    assert metrics.micro_f1(preds, golds, None) == pytest.approx(expected)
    assert metrics.micro_f1(preds, golds, None) == pytest.approx(metrics.accuracy(preds, golds))


def test_always_predicting_the_negative_class_scores_zero() -> None:
    golds = [0, 3, 4, 0, 5]
    out = metrics.compute("micro_f1", [0] * 5, golds, 0)
    assert out["micro_f1"] == 0.0 and out["precision"] == 0.0 and out["recall"] == 0.0
    assert out["accuracy"] == pytest.approx(0.4)


def test_compute_selects_the_score_and_rejects_unknown_metrics() -> None:
    out = metrics.compute("accuracy", [1, 2, 2], [1, 2, 3], None)
    assert out["score"] == pytest.approx(2 / 3) and out["n"] == 3
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute("macro_f1", [1], [1])
    with pytest.raises(ValueError, match="2 predictions for 1"):
        metrics.accuracy([1, 2], [1])
