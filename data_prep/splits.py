"""Training subsets at any fraction in (0, 1] (Appendix B, Table 9), stable across machines.

The paper takes ``ceil(n * p)`` instances of every relation but its code set no seed. Here each
relation's examples are ranked by ``sha256(f"{seed}:{relation}:{index}")`` (``index`` = position in
the full training list) and the first ``ceil(n * p)`` are kept, returned in file order. This uses
neither Python's ``random`` nor ``hash()``, so the subset depends only on the seed and the file.
Any fraction works (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0 ...).

``source="paper"`` uses the released ``train_<fraction>`` file where one exists (the authors' 0.01
and 0.1 files, or a user's own ``train_0.05.txt``/``train_0.1.json`` in the dataset directory) and
FALLS BACK to the seeded per-relation sampler where none does (TACRED ships none; other fractions
have none). :func:`resolve_training_subset` says which source was actually used so a trial can
record it; :func:`training_subset` returns only the examples, for older callers.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from recon.data_prep.dataset import Dataset
from recon.core.errors import DatasetNotFound, ReconError
from recon.data_prep.example import RelationExample
from recon.data_prep.loaders import LoadReport, check_labels, check_policy, find_split_file, load_file

PAPER_FRACTIONS = (0.01, 0.1)  # the released train_0.01 / train_0.1 files (Table 9)
SOURCES = ("seeded", "paper")
USED_SOURCES = ("seeded", "paper", "full")


def _rank(seed: int, relation: str, index: int) -> bytes:
    return hashlib.sha256(f"{seed}:{relation}:{index}".encode("utf-8")).digest()


def check_fraction(fraction: float) -> None:
    """Any training fraction in (0, 1]; anything else is a ReconError."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ReconError(f"fraction must be in (0, 1], got {fraction!r}")


_check_fraction = check_fraction  # older name


def stratified_subset(examples: Sequence[RelationExample], fraction: float, seed: int) -> list[RelationExample]:
    """``ceil(n * fraction)`` examples of every relation, chosen by a seeded hash, in input order."""
    check_fraction(fraction)
    by_relation: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        by_relation[example.label].append(index)
    chosen: list[int] = []
    for relation in sorted(by_relation):
        indices = by_relation[relation]
        take = math.ceil(round(len(indices) * fraction, 9))  # round: 0.1 * 70 is 7.000000000000001
        chosen.extend(sorted(indices, key=lambda i: _rank(seed, relation, i))[:take])
    return [examples[i] for i in sorted(chosen)]


@dataclass
class TrainingSubset:
    """The training examples of one run and where they came from.

    ``source_used``: ``"paper"`` (a ``train_<fraction>`` file, named in ``file``), ``"seeded"``
    (per-relation sampling from train with ``seed``) or ``"full"`` (fraction 1.0: all of train).
    ``requested`` is the source asked for; ``fell_back`` is True when ``"paper"`` was asked for and
    no file existed, so seeded sampling was used. ``note`` says it in words (empty when nothing
    notable happened). ``report`` counts records skipped while loading the subset file.
    """

    examples: list[RelationExample]
    source_used: str
    requested: str
    fraction: float
    seed: int | None
    file: str | None = None
    note: str = ""
    report: LoadReport = field(default_factory=LoadReport)

    @property
    def fell_back(self) -> bool:
        return self.requested == "paper" and self.source_used == "seeded"

    def __len__(self) -> int:
        return len(self.examples)

    def describe(self) -> str:
        """Short provenance label, e.g. ``paper:train_0.1.txt`` or ``seeded:42``."""
        if self.source_used == "paper":
            return f"paper:{Path(self.file).name if self.file else ''}"
        return "full" if self.source_used == "full" else f"seeded:{self.seed}"

    def to_dict(self) -> dict:
        return {"fraction": self.fraction, "requested": self.requested, "source_used": self.source_used,
                "seed": self.seed if self.source_used == "seeded" else None, "file": self.file,
                "fell_back": self.fell_back, "note": self.note, "size": len(self.examples),
                "skipped": dict(self.report.skipped)}


def _train_or_raise(dataset: Dataset, fraction: float, source: str) -> list[RelationExample]:
    if "train" in dataset.splits:
        return dataset.splits["train"]
    hint = " Use --split-source paper (split_source: paper) for the shipped 1%/10% files." if (
        source == "seeded" and any(k.startswith("train_") for k in dataset.files)) else ""
    wanted = f" and no train_{fraction:g} file" if source == "paper" else ""
    raise DatasetNotFound(f"dataset {dataset.name!r} has no training split locally{wanted} "
                          f"({'; '.join(dataset.notes) or 'no train file'}).{hint}")


def load_paper_subset(dataset: Dataset, fraction: float, errors: str | None = None, *,
                      on_error: str | None = None, report: LoadReport | None = None):
    """The shipped (or user's own) ``train_<fraction>`` file of ``dataset``, loaded as-is.

    The policy defaults to the one ``dataset`` was loaded with; skipped records go to ``report``.
    """
    policy = check_policy(on_error, errors) if (on_error or errors) else dataset.on_error
    key = f"train_{fraction:g}"
    found = dataset.files.get(key) or (find_split_file(dataset.directory, key) if dataset.directory else None)
    if not found:
        raise DatasetNotFound(f"dataset {dataset.name!r} has no paper split file {key} "
                              f"(paper fractions: {', '.join(f'{p:g}' for p in PAPER_FRACTIONS)})")
    examples = load_file(found, dataset.kind, report=report, on_error=policy)
    if "rel2id" in dataset.files:
        examples = check_labels(examples, dataset.labels, dataset.files["rel2id"], report=report, on_error=policy)
    return examples


def resolve_training_subset(dataset: Dataset, fraction: float, seed: int,
                            source: str = "seeded") -> TrainingSubset:
    """The training examples for a fraction-of-train run, and which source was actually used.

    * ``fraction == 1.0``: the whole train split (``source_used="full"``), whatever ``source``.
    * ``source="seeded"``: :func:`stratified_subset` of train with ``seed``.
    * ``source="paper"``: the ``train_<fraction>`` file when the dataset directory has one
      (``source_used="paper"``, loaded with the dataset's ``on_error`` policy); otherwise seeded
      sampling of train (``source_used="seeded"``, ``note`` says why). Raises
      :class:`DatasetNotFound` only when neither a file nor a train split exists.
    """
    check_fraction(fraction)
    if source not in SOURCES:
        raise ReconError(f"unknown split source {source!r}; use one of {', '.join(SOURCES)}")
    if fraction == 1.0:
        train = _train_or_raise(dataset, fraction, "seeded")
        return TrainingSubset(list(train), "full", source, 1.0, None, file=dataset.files.get("train"))
    if source == "paper":
        found = dataset.files.get(f"train_{fraction:g}")
        if found is None and dataset.directory:
            path = find_split_file(dataset.directory, f"train_{fraction:g}")
            found = str(path) if path is not None else None
        if found is not None:
            report = LoadReport(path=found)
            examples = load_paper_subset(dataset, fraction, report=report)
            report.loaded = len(examples)
            note = (f"skipped {report.total_skipped} bad record(s) in {found}" if report.total_skipped else "")
            return TrainingSubset(examples, "paper", source, fraction, None, file=found, note=note,
                                  report=report)
        train = _train_or_raise(dataset, fraction, "paper")
        where = f" in {dataset.directory}" if dataset.directory else ""
        note = (f"no train_{fraction:g} file{where}: fell back to seeded per-relation sampling "
                f"(seed {seed}) of train")
        return TrainingSubset(stratified_subset(train, fraction, seed), "seeded", source, fraction, seed,
                              file=dataset.files.get("train"), note=note)
    train = _train_or_raise(dataset, fraction, "seeded")
    return TrainingSubset(stratified_subset(train, fraction, seed), "seeded", source, fraction, seed,
                          file=dataset.files.get("train"))


def training_subset(dataset: Dataset, fraction: float, seed: int, source: str = "seeded") -> list[RelationExample]:
    """The training examples only (see :func:`resolve_training_subset` for where they came from)."""
    return resolve_training_subset(dataset, fraction, seed, source).examples


__all__ = ["PAPER_FRACTIONS", "SOURCES", "USED_SOURCES", "load_paper_subset", "TrainingSubset", "check_fraction", "stratified_subset",
           "resolve_training_subset", "training_subset"]
