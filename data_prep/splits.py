"""Seeded 1%/10%/100% training subsets (Appendix B, Table 9), stable across machines.

The paper takes ``ceil(n * p)`` instances of every relation but its code set no seed. Here each
relation's examples are ranked by ``sha256(f"{seed}:{relation}:{index}")`` (``index`` = position in
the full training list) and the first ``ceil(n * p)`` are kept, returned in file order. This uses
neither Python's ``random`` nor ``hash()``, so the subset depends only on the seed and the file.
``source="paper"`` uses the authors' shipped ``train_0.01``/``train_0.1`` files instead.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Sequence

from .dataset import Dataset
from .errors import DatasetNotFound, ReconError
from .example import RelationExample

SOURCES = ("seeded", "paper")


def _rank(seed: int, relation: str, index: int) -> bytes:
    return hashlib.sha256(f"{seed}:{relation}:{index}".encode("utf-8")).digest()


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise ReconError(f"fraction must be in (0, 1], got {fraction}")


def stratified_subset(examples: Sequence[RelationExample], fraction: float, seed: int) -> list[RelationExample]:
    """``ceil(n * fraction)`` examples of every relation, chosen by a seeded hash, in input order."""
    _check_fraction(fraction)
    by_relation: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        by_relation[example.label].append(index)
    chosen: list[int] = []
    for relation in sorted(by_relation):
        indices = by_relation[relation]
        take = math.ceil(round(len(indices) * fraction, 9))  # round: 0.1 * 70 is 7.000000000000001
        chosen.extend(sorted(indices, key=lambda i: _rank(seed, relation, i))[:take])
    return [examples[i] for i in sorted(chosen)]


def training_subset(dataset: Dataset, fraction: float, seed: int, source: str = "seeded") -> list[RelationExample]:
    """The training examples for a fraction-of-train run (1.0 -> the whole train split)."""
    _check_fraction(fraction)
    if source not in SOURCES:
        raise ReconError(f"unknown split source {source!r}; use one of {', '.join(SOURCES)}")
    if source == "paper" and fraction != 1.0:
        from .registry import load_paper_subset

        return load_paper_subset(dataset, fraction)
    if "train" not in dataset.splits:
        hint = " Use --split-source paper for the shipped 1%/10% files." if any(
            k.startswith("train_") for k in dataset.files) else ""
        raise DatasetNotFound(f"dataset {dataset.name!r} has no training split locally "
                              f"({'; '.join(dataset.notes) or 'no train file'}).{hint}")
    train = dataset.splits["train"]
    return list(train) if fraction == 1.0 else stratified_subset(train, fraction, seed)
