"""Relation-classification metrics: micro-F1 over the non-negative labels, accuracy, and SemEval's official score.

The negative class (``Other``, ``no_relation``...) is passed in by id, found by the caller from
the label *name*; nothing here assumes it is id 0 (assuming so inflates TACRED F1 when the
negative class sits elsewhere). With no negative class micro-F1 over all labels equals accuracy,
which is why the paper can report "micro-F1" for ChemProt and accuracy for Wiki80 with one code
path.

**SemEval-2010 Task 8's official score** (scorer v1.2, "(9+1)-way evaluation with directionality taken
into account, macro-averaged F1"; the paper's SemEval figures come from it, not from the authors' code).
A label's *type* is its name without the direction (``Cause-Effect(e2,e1)`` -> ``Cause-Effect``). For each
of the relation types present among the gold labels (``Other`` excluded):
``correct_t`` = examples of gold type t predicted exactly (direction included), ``P_t = correct_t /``
(predictions of type t, either direction), ``R_t = correct_t /`` (gold examples of type t), ``F1_t`` from
them; the score is the mean of the ``F1_t``. A prediction of the right type in the wrong direction
counts against both P and R. Since ``F1_t = 2 correct_t / (predicted_t + gold_t)``, every score here is
a function of per-example counts (:func:`example_counts`), which is what the paired bootstrap resamples.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

import re
from typing import Callable, Hashable, Mapping, Optional

METRICS = ("micro_f1", "accuracy")        # what model selection can use
SEMEVAL_OFFICIAL = "semeval_official"    # a reported score (SemEval's registry entry names it)
REPORTED_METRICS = (*METRICS, SEMEVAL_OFFICIAL)
METRIC_LABELS = {  # how tables and findings name each metric
    "micro_f1": "micro-F1 (negative class excluded)",
    "accuracy": "accuracy",
    SEMEVAL_OFFICIAL: "SemEval-2010 Task 8 official score (macro-F1 over 9 relation types, direction required)",
}
_DIRECTION = re.compile(r"\(e[12],e[12]\)$")


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
    metric_name: str, preds: Sequence[int], golds: Sequence[int], negative_id: int | None = None,
    scorers: "Mapping[str, Callable[[Sequence[int], Sequence[int]], float]] | None" = None,
) -> dict:
    """All figures for one evaluation; ``score`` is the one ``metric_name`` selects for model choice.

    ``scorers`` adds named figures computed from the same predictions (SemEval's official score,
    :func:`label_scorers`).
    """
    if metric_name not in METRICS:
        raise ValueError(f"unknown metric {metric_name!r}; known: {', '.join(METRICS)}")
    precision, recall, f1 = precision_recall_f1(preds, golds, negative_id)
    acc = accuracy(preds, golds)
    out = {
        "metric": metric_name,
        "score": f1 if metric_name == "micro_f1" else acc,
        "micro_f1": f1,
        "precision": precision,
        "recall": recall,
        "accuracy": acc,
        "n": int(len(golds)),
    }
    for name, scorer in (scorers or {}).items():
        out[name] = float(scorer(preds, golds)) if len(golds) else 0.0
    return out


def relation_type(label: str) -> str:
    """A SemEval label without its direction: ``Cause-Effect(e2,e1)`` -> ``Cause-Effect``."""
    return _DIRECTION.sub("", label)


def example_counts(golds: Sequence[Hashable], preds: Sequence[Hashable], metric: str,
                   negative: Optional[Hashable] = None) -> tuple[np.ndarray, list]:
    """Per-example counts ``[n, K, 3]`` of (correct, predicted, gold) per class group, and the groups.

    ``micro_f1`` / ``accuracy``: one group (K=1): a non-negative prediction equal to the gold label, a
    non-negative prediction, a non-negative gold label (every example counts when ``negative`` is None,
    which makes the same formula accuracy). ``semeval_official``: one group per relation type among the
    gold labels (``negative`` excluded): an exact prediction of gold type t, a prediction of type t, a
    gold label of type t. :func:`score_from_counts` turns summed counts into the score.
    """
    g = np.asarray(list(golds), dtype=object)
    p = np.asarray(list(preds), dtype=object)
    if g.shape != p.shape:
        raise ValueError(f"{p.size} predictions for {g.size} gold labels")
    if metric == SEMEVAL_OFFICIAL:
        types = sorted({relation_type(str(x)) for x in g if x != negative})
        gt = np.array([relation_type(str(x)) if x != negative else None for x in g], dtype=object)
        pt = np.array([relation_type(str(x)) if x != negative else None for x in p], dtype=object)
        exact = p == g
        counts = np.stack([np.stack([exact & (gt == t), pt == t, gt == t], axis=1) for t in types], axis=1)
        return counts.astype(np.float64).reshape(len(g), len(types), 3), types
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(REPORTED_METRICS)}")
    if negative is None:
        pred_pos = np.ones(len(g), dtype=bool)
        gold_pos = np.ones(len(g), dtype=bool)
    else:
        pred_pos, gold_pos = p != negative, g != negative
    correct = pred_pos & gold_pos & (p == g)
    return np.stack([correct, pred_pos, gold_pos], axis=1).astype(np.float64).reshape(len(g), 1, 3), ["*"]


def score_from_counts(counts: np.ndarray) -> np.ndarray:
    """``[..., K, 3]`` summed counts -> the score: the mean over groups with gold examples of
    ``2 correct / (predicted + gold)`` (micro-F1 / accuracy for K=1; SemEval's macro-F1 per type).

    A group without gold examples (a type absent from a resample) is left out of the mean, as the
    official scorer averages over the types in the key; with none at all the score is 0.
    """
    c, p, g = counts[..., 0], counts[..., 1], counts[..., 2]
    denom = p + g
    f1 = np.divide(2 * c, denom, out=np.zeros_like(c, dtype=np.float64), where=denom > 0)
    present = g > 0
    n = present.sum(axis=-1)
    if counts.shape[-2] == 1:  # micro: a prediction without any gold still costs precision (score 0)
        return f1[..., 0]
    return np.divide((f1 * present).sum(axis=-1), n, out=np.zeros(f1.shape[:-1]), where=n > 0)


def semeval_official(golds: Sequence[str], preds: Sequence[str], negative: str = "Other") -> float:
    """SemEval-2010 Task 8's official score (scorer v1.2) as a fraction: macro-F1 over the relation types."""
    counts, _ = example_counts(golds, preds, SEMEVAL_OFFICIAL, negative)
    return float(score_from_counts(counts.sum(axis=0)))


def label_scorers(metric_names: Sequence[str], id2label: Mapping[int, str], negative: Optional[str]
                  ) -> dict[str, Callable[[Sequence[int], Sequence[int]], float]]:
    """Extra scores over label ids for :func:`compute` / ``training.fit`` (``{"semeval_official": fn}``)."""
    out = {}
    for name in metric_names:
        if name == SEMEVAL_OFFICIAL:
            out[name] = lambda preds, golds: semeval_official([id2label[int(x)] for x in golds],
                                                              [id2label[int(x)] for x in preds],
                                                              negative or "Other")
        elif name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(REPORTED_METRICS)}")
    return out
