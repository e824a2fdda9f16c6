"""Relation-classification metrics: micro-F1 over the non-negative labels, and accuracy.

The negative class (``Other``, ``no_relation``...) is passed in by id, found by the caller from
the label *name*; nothing here assumes it is id 0 (assuming so inflates TACRED F1 when the
negative class sits elsewhere). With no negative class micro-F1 over all labels equals accuracy,
which is why the paper can report "micro-F1" for ChemProt and accuracy for Wiki80 with one code
path.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("micro_f1", "accuracy")


def _arrays(preds: Sequence[int], golds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(preds, dtype=np.int64).reshape(-1)
    g = np.asarray(golds, dtype=np.int64).reshape(-1)
    if p.shape != g.shape:
        raise ValueError(f"{p.size} predictions for {g.size} gold labels")
    return p, g


def precision_recall_f1(
    preds: Sequence[int], golds: Sequence[int], negative_id: int | None
) -> tuple[float, float, float]:
    """Micro precision/recall/F1 where predicting or having the negative label never counts.

    precision = correct non-negative predictions / non-negative predictions,
    recall    = correct non-negative predictions / non-negative golds.
    Empty denominators give 0 (sklearn's ``zero_division=0``).
    """
    p, g = _arrays(preds, golds)
    if negative_id is None:
        pred_pos = np.ones_like(p, dtype=bool)
        gold_pos = np.ones_like(g, dtype=bool)
    else:
        pred_pos, gold_pos = p != negative_id, g != negative_id
    correct = int(np.sum(pred_pos & gold_pos & (p == g)))
    n_pred, n_gold = int(pred_pos.sum()), int(gold_pos.sum())
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def micro_f1(preds: Sequence[int], golds: Sequence[int], negative_id: int | None) -> float:
    """Micro-F1 over every label except ``negative_id`` (over all labels when it is None)."""
    return precision_recall_f1(preds, golds, negative_id)[2]


def accuracy(preds: Sequence[int], golds: Sequence[int]) -> float:
    """Share of predictions equal to the gold label (0 for no examples)."""
    p, g = _arrays(preds, golds)
    return float(np.mean(p == g)) if p.size else 0.0


def compute(
    metric_name: str, preds: Sequence[int], golds: Sequence[int], negative_id: int | None = None
) -> dict:
    """All figures for one evaluation; ``score`` is the one ``metric_name`` selects for model choice."""
    if metric_name not in METRICS:
        raise ValueError(f"unknown metric {metric_name!r}; known: {', '.join(METRICS)}")
    precision, recall, f1 = precision_recall_f1(preds, golds, negative_id)
    acc = accuracy(preds, golds)
    return {
        "metric": metric_name,
        "score": f1 if metric_name == "micro_f1" else acc,
        "micro_f1": f1,
        "precision": precision,
        "recall": recall,
        "accuracy": acc,
        "n": int(len(golds)),
    }
