"""Known benchmarks, the paper's facts about them, and how to load them.

    from recon.data_prep.registry import load_dataset
    ds = load_dataset("semeval")                         # from the data directory (see datadir.py)
    ds = load_dataset(path="/data/mine", kind="opennre")  # any directory with train/dev/test files
    ds = load_dataset(path="/data/kbp37", kind="opennre", on_error="skip")  # skip and count bad records

Splits that are absent locally (Wiki80 train/test, FewRel train_wiki) are reported in
``Dataset.notes``/``Dataset.missing`` with the paper's sizes instead of failing; a dataset with no
file at all raises :class:`DatasetNotFound`.

This module is the one home of the dataset facts: :class:`DatasetSpec` carries the paper's sizes per
split and per training subset, the metric, the paper's display name and the task kind; use
:func:`supervised_datasets`, :func:`fewshot_datasets`, :func:`metric_of`, :func:`display_name(s)`,
:func:`paper_split_sizes`, :func:`paper_subset_size` and :func:`expected_train_size` rather than
restating them. :func:`check_available` says, from file listings alone, why a run cannot start here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from recon.data_prep.dataset import Dataset
from recon.data_prep.datadir import candidate_dirs, existing_data_root, how_to_get, resolve_dataset_dir
from recon.core.errors import DataError, DatasetNotFound, ReconError
from recon.data_prep.splits import PAPER_FRACTIONS, SOURCES, check_fraction
from recon.data_prep.loaders import (KINDS, LAYOUTS, LoadReport, check_labels, check_policy, describe_reason,
                                     find_data_file, find_negative, find_split_file, layout_kinds_here, load_file,
                                     locate_data_file, read_rel2id)

SUPERVISED_LENGTH = 100  # Appendix B
FEWSHOT_LENGTH = 128
TASKS = ("supervised", "fewshot")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything recon knows about one benchmark: files, format, metric and the paper's facts.

    ``paper_sizes`` holds the paper's Table 8 sizes per split (``train``/``dev``/``test``; FewRel:
    ``train``/``val``/``test``) and its Table 9 subset sizes under ``train_0.01``/``train_0.1``.
    ``display_name`` is the name the paper's tables use (``reported_results.csv``); ``task`` is
    ``"supervised"`` (fine-tuning grids) or ``"fewshot"`` (N-way K-shot evaluation).
    """

    name: str
    directory: str
    kind: str
    splits: dict[str, str]  # split -> file name inside directory
    metric: str
    max_length: int = SUPERVISED_LENGTH
    paper_splits: dict[str, str] = field(default_factory=dict)  # "train_0.01" -> file name
    rel2id: str | None = "rel2id.json"
    paper_sizes: dict[str, int] = field(default_factory=dict)
    display_name: str = ""
    task: str = "supervised"
    licence_note: str | None = None  # why recon cannot download it (TACRED: LDC)
    official_metric: str | None = None  # the benchmark's own scorer where it differs from ``metric`` (SemEval)

    @property
    def paper_split_sizes(self) -> tuple[int | None, int | None, int | None]:
        """Paper Table 8 ``(train, dev, test)``; FewRel's ``val`` counts as dev; None where not given."""
        dev = self.paper_sizes.get("dev", self.paper_sizes.get("val"))
        return self.paper_sizes.get("train"), dev, self.paper_sizes.get("test")

    @property
    def paper_subset_sizes(self) -> dict[float, int]:
        """Paper Table 9 training-subset sizes by fraction, e.g. ``{0.01: 73, 0.1: 660}``."""
        return {p: self.paper_sizes[f"train_{p:g}"] for p in PAPER_FRACTIONS if f"train_{p:g}" in self.paper_sizes}

    def paper_train_size(self, fraction: float) -> int | None:
        """Paper size of the training set at ``fraction`` (1.0 -> full train); None if the paper has none."""
        if fraction >= 1.0:
            return self.paper_sizes.get("train")
        return self.paper_sizes.get(f"train_{fraction:g}")


def _supervised(name: str, kind: str, metric: str, ext: str, sizes: dict[str, int], display: str,
                paper_splits: bool = True, licence_note: str | None = None,
                official_metric: str | None = None) -> DatasetSpec:
    return DatasetSpec(
        name=name, directory=name, kind=kind,
        splits={s: f"{s}{ext}" for s in ("train", "dev", "test")}, metric=metric,
        paper_splits={f"train_{p:g}": f"train_{p:g}{ext}" for p in PAPER_FRACTIONS} if paper_splits else {},
        rel2id="rel2id.json" if kind != "tacred" else None, paper_sizes=sizes, display_name=display,
        task="supervised", licence_note=licence_note, official_metric=official_metric,
    )


REGISTRY: dict[str, DatasetSpec] = {
    "semeval": _supervised("semeval", "opennre", "micro_f1", ".txt",
                           {"train": 6507, "dev": 1493, "test": 2717, "train_0.01": 73, "train_0.1": 660},
                           "SemEval", official_metric="semeval_official"),  # scorer v1.2, as the paper
    "chemprot": _supervised("chemprot", "chemprot", "micro_f1", ".txt",
                            {"train": 4169, "dev": 2427, "test": 3469, "train_0.01": 49, "train_0.1": 423},
                            "ChemProt"),
    "wiki80": _supervised("wiki80", "opennre", "accuracy", ".txt",
                          {"train": 39200, "dev": 5600, "test": 11200, "train_0.01": 400, "train_0.1": 3920},
                          "Wiki80"),
    "tacred": _supervised("tacred", "tacred", "micro_f1", ".json",
                          {"train": 68124, "dev": 22631, "test": 15509, "train_0.01": 703, "train_0.1": 6833},
                          "TACRED", paper_splits=False,
                          licence_note="LDC licence (LDC2018T24): put train/dev/test.json in {dir}"),
    "fewrel": DatasetSpec("fewrel", "fewrel", "fewrel", {"train": "train_wiki.json", "val": "val_wiki.json"},
                          "accuracy", FEWSHOT_LENGTH, rel2id=None,
                          paper_sizes={"train": 44800, "val": 11200, "test": 14000},
                          display_name="FewRel 1.0", task="fewshot"),
    "fewrel-pubmed": DatasetSpec("fewrel-pubmed", "fewrel", "fewrel", {"val": "val_pubmed.json"},
                                 "accuracy", FEWSHOT_LENGTH, rel2id=None, paper_sizes={"val": 1000},
                                 display_name="FewRel 2.0 DA", task="fewshot"),
}
KIND_METRIC = {"fewrel": "accuracy"}  # every other kind (--path) is scored by micro-F1


def supervised_datasets() -> tuple[str, ...]:
    """Registered datasets of the supervised grids (paper Tables 1, 5), in the paper's order."""
    return tuple(name for name, spec in REGISTRY.items() if spec.task == "supervised")


def fewshot_datasets() -> tuple[str, ...]:
    """Registered few-shot evaluation sets (paper Table 6): ``("fewrel", "fewrel-pubmed")``."""
    return tuple(name for name, spec in REGISTRY.items() if spec.task == "fewshot")


def metric_of(name: str) -> str:
    """``"micro_f1"`` or ``"accuracy"`` for a registered dataset."""
    return get_spec(name).metric


def reported_metric(name: str, scorer: str = "recon") -> str:
    """The metric tables report for a dataset: its official scorer's (``scorer="official"``, where the
    benchmark has one: SemEval's ``semeval_official``), else recon's (:func:`metric_of`). Unregistered
    datasets (``--path``) report micro-F1."""
    if name not in REGISTRY:
        return "micro_f1"
    spec = get_spec(name)
    return spec.official_metric if scorer == "official" and spec.official_metric else spec.metric


def display_name(name: str) -> str:
    """The paper's name for a dataset (``"SemEval"``, ``"FewRel 2.0 DA"``); unknown names unchanged."""
    return REGISTRY[name].display_name or name if name in REGISTRY else name


def display_names() -> dict[str, str]:
    """``{registry name: paper name}`` for every registered dataset."""
    return {name: display_name(name) for name in REGISTRY}


def paper_split_sizes(name: str) -> tuple[int | None, int | None, int | None]:
    """Paper Table 8 ``(train, dev, test)`` of a registered dataset."""
    return get_spec(name).paper_split_sizes


def paper_subset_size(name: str, fraction: float) -> int | None:
    """Paper size of the training set at ``fraction`` (Table 9 for 0.01/0.1, Table 8 for 1.0), else None."""
    return get_spec(name).paper_train_size(fraction)


def expected_train_size(name: str, fraction: float) -> int:
    """Training examples a ``fraction`` run gets: the paper's size where it gives one, otherwise an
    estimate ``ceil(train * fraction)`` from the paper's full train size (the per-relation ceilings of
    the real sampler make it slightly larger)."""
    spec = get_spec(name)
    exact = spec.paper_train_size(fraction)
    if exact is not None:
        return exact
    full = spec.paper_sizes.get("train")
    if full is None:
        raise ReconError(f"dataset {name!r} has no paper training size")
    return math.ceil(round(full * fraction, 9))


def get_spec(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise ReconError(f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)} "
                         f"(or use --path DIR --kind {'|'.join(KINDS)})")
    return REGISTRY[name]


def _split_files(path: Path, kind: str) -> dict[str, Path]:
    """Split -> file: the kind's :class:`~recon.data_prep.loaders.Layout` where it has one, else
    ``train``/``dev``/``test`` (FewRel: also ``val``) with any of .txt/.jsonl/.json."""
    if kind in LAYOUTS:
        return LAYOUTS[kind].files(path)
    split_names = ("train", "val", "test", "dev") if kind == "fewrel" else ("train", "dev", "test")
    return {s: f for s in split_names if (f := find_split_file(path, s)) is not None}


def _no_files_message(path: Path, kind: str) -> str:
    """Why ``--path`` holds nothing for ``kind``, and which kind its files look like when we can tell."""
    wanted = LAYOUTS[kind].looks_like if kind in LAYOUTS else "train/dev/test file (.txt, .jsonl or .json)"
    message = f"no {wanted} in {path}"
    others = [k for k in layout_kinds_here(path) if k != kind]
    if others:
        return f"{message}; it holds a {LAYOUTS[others[0]].looks_like}: use --kind {others[0]}"
    if kind in LAYOUTS and any(find_split_file(path, s) for s in ("train", "dev", "test")):
        return f"{message}; it holds train/dev/test files: use the kind of their format (opennre, tacred, chemprot)"
    return message


def _spec_for_path(path: Path, kind: str | None) -> DatasetSpec:
    if kind not in KINDS:
        raise ReconError(f"--path needs --kind, one of {', '.join(KINDS)} (got {kind!r})")
    if not path.is_dir():
        raise DatasetNotFound(f"--path {path} is not a directory")
    splits = {s: str(f.relative_to(path)) for s, f in _split_files(path, kind).items()}
    if not splits:
        raise DatasetNotFound(_no_files_message(path, kind))
    paper = {f"train_{p:g}": f.name for p in PAPER_FRACTIONS
             if (f := find_split_file(path, f"train_{p:g}")) is not None}
    return DatasetSpec(path.name or str(path), str(path), kind, splits, KIND_METRIC.get(kind, "micro_f1"),
                       FEWSHOT_LENGTH if kind == "fewrel" else SUPERVISED_LENGTH, paper_splits=paper,
                       rel2id="rel2id.json" if find_data_file(path / "rel2id.json") is not None else None,
                       display_name=path.name or str(path),
                       task="fewshot" if kind == "fewrel" else "supervised")


def subset_file(directory: str | Path | None, fraction: float, spec: DatasetSpec | None = None) -> Path | None:
    """The ``train_<fraction>`` file in ``directory``: the registered name first, then any of
    .txt/.jsonl/.json, each also gzip-compressed (so a user's own ``train_0.05.txt`` or TACRED
    ``train_0.1.json`` is found)."""
    if directory is None:
        return None
    key = f"train_{fraction:g}"
    if spec is not None and key in spec.paper_splits:
        found = find_data_file(Path(directory) / spec.paper_splits[key])
        if found is not None:
            return found
    return find_split_file(directory, key)


def load_dataset(name: str | None = None, *, path: str | None = None, kind: str | None = None,
                 data_dir: str | None = None, on_error: str | None = None,
                 errors: str | None = None) -> Dataset:
    """Load a registered dataset by ``name``, or any directory by ``path`` + ``kind``.

    ``on_error="raise"`` (default) stops at the first bad record, naming file, line/record and field;
    ``on_error="skip"`` skips bad records and counts them by reason in ``Dataset.report``
    (``Dataset.skipped``). ``errors`` is the older name of ``on_error``. A split file may be gzip-compressed
    (``train.txt.gz``, or gzip bytes named ``train.txt``). Refused with a DataError naming the path: a split
    file or rel2id.json that is a folder or a broken link, and a file that leaves no example (every record
    skipped, or none in it): nothing downstream can train or score on an empty split.
    """
    policy = check_policy(on_error, errors)
    if (name is None) == (path is None):
        raise ReconError("give either a dataset name or --path DIR --kind KIND (not both)")
    if path is not None:
        spec = _spec_for_path(Path(path), kind)
        directory = Path(path)
    else:
        spec = get_spec(name)
        directory = resolve_dataset_dir(spec.name, spec.directory, data_dir)
    report = LoadReport(path=str(directory))
    files: dict[str, str] = {}
    splits, missing, notes = {}, [], []
    layout = LAYOUTS.get(spec.kind)
    parsed: dict[Path, list] = {}  # a file shared by several splits (layouts) is read once
    for split, file_name in spec.splits.items():
        file_path = find_data_file(directory / file_name)  # FILE or FILE.gz; a folder or broken link raises
        if file_path is None:
            missing.append(split)
            size = spec.paper_sizes.get(split)
            notes.append(f"{file_name} not available locally" + (f" (paper: {size:,} instances)" if size else ""))
            continue
        files[split] = str(file_path)
        if file_path not in parsed:
            parsed[file_path] = load_file(file_path, spec.kind, report=report, on_error=policy)
        splits[split] = layout.carve(split, parsed[file_path]) if layout else parsed[file_path]
    for fraction in PAPER_FRACTIONS:
        found = subset_file(directory, fraction, spec)
        if found is not None:
            files[f"train_{fraction:g}"] = str(found)
    if not splits:
        raise DatasetNotFound(f"dataset {spec.name!r}: none of {', '.join(spec.splits.values())} exists in "
                              f"{directory}. {how_to_get(spec.name)}")
    rel2id_path = find_data_file(directory / spec.rel2id) if spec.rel2id else None
    if rel2id_path is not None:
        files["rel2id"] = str(rel2id_path)
        labels = read_rel2id(rel2id_path)
        splits = {s: check_labels(xs, labels, rel2id_path, report=report, on_error=policy)
                  for s, xs in splits.items()}
    elif layout and layout.labels:
        labels = list(layout.labels)
    else:
        labels = sorted({ex.label for xs in splits.values() for ex in xs})
    if layout and layout.note and splits:
        notes.append(layout.note)
    report.loaded = sum(len(xs) for xs in splits.values())
    if report.total_skipped:
        notes.append(f"skipped {report.total_skipped} bad record(s) (on_error=skip): "
                     + ", ".join(f"{describe_reason(r)} x{n}" for r, n in report.skipped.most_common()))
    return Dataset(name=spec.name, splits=splits, labels=labels, negative_label=find_negative(labels),
                   metric=spec.metric, max_length=spec.max_length, files=files, notes=notes,
                   kind=spec.kind, missing=missing, report=report, on_error=policy, directory=str(directory),
                   task=spec.task, display_name=spec.display_name or spec.name)


def paper_size(name: str, split: str) -> int | None:
    return REGISTRY[name].paper_sizes.get(split) if name in REGISTRY else None


# ---------------------------------------------------------------- availability (no parsing)

def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _locate(name: str | None, path: str | None, kind: str | None,
            data_dir: str | None) -> tuple[DatasetSpec | None, Path | None, str | None]:
    """``(spec, directory, None)`` or ``(spec, None, reason)``; only directory listings, no parsing."""
    if path is not None:
        try:
            return _spec_for_path(Path(path), kind), Path(path), None
        except DatasetNotFound as exc:
            return None, None, f"no data here ({exc})"
        except DataError as exc:  # a split file or rel2id.json that is a folder or a broken link
            return None, None, str(exc)
    spec = get_spec(name)
    candidates = candidate_dirs(data_dir)
    for base, _why in candidates:
        if (base / spec.directory).is_dir():
            return spec, base / spec.directory, None
    base = existing_data_root(data_dir) or candidates[0][0]
    where = base / spec.directory
    if spec.licence_note:
        return spec, None, f"no data here ({spec.licence_note.format(dir=where)})"
    return spec, None, f"no data here ({where} does not exist; get it with `recon data fetch {spec.name}`)"


def _file_reason(path: Path, what: str, size: int | None, spec: DatasetSpec) -> str | None:
    found, problem = locate_data_file(path)  # the file or its .gz copy, as load_dataset finds them
    if problem:
        return f"{what} file {problem}"
    if found is not None:
        return f"{what} file {found} is empty" if found.stat().st_size == 0 else None
    paper = f"; paper: {size:,} instances" if size else ""
    hint = f"; {spec.licence_note.format(dir=path.parent)}" if spec.licence_note else ""
    return f"no {what} file here ({path}{paper}{hint})"


def check_available(name: str | None = None, data_dir: str | None = None,
                    needs: tuple[str, ...] | None = None, split: float = 1.0, split_source: str = "seeded",
                    *, path: str | None = None, kind: str | None = None) -> list[str]:
    """Why a run on this dataset cannot run here; an empty list means it can. Parses no file.

    ``needs``: the splits the run reads (default ``("train", "dev", "test")`` for supervised datasets,
    ``("val",)`` for few-shot ones). ``"train"`` means the training data of ``split`` (a fraction in
    (0, 1]) drawn by ``split_source``: ``"paper"`` is satisfied by a ``train_<split>`` file or, as
    :func:`recon.data_prep.splits.resolve_training_subset` falls back, by a train file to sample from;
    ``"seeded"`` needs the train file. Examples: TACRED without a copy ->
    ``["no data here (LDC licence (LDC2018T24): put train/dev/test.json in DIR/tacred)"]``;
    Wiki80 at 100% -> ``["no train file here (...train.txt; paper: 39,200 instances)",
    "no test file here (...)"]``.
    """
    check_fraction(split)
    if split_source not in SOURCES:
        raise ReconError(f"unknown split source {split_source!r}; use one of {', '.join(SOURCES)}")
    if (name is None) == (path is None):
        raise ReconError("give either a dataset name or path + kind (not both)")
    spec, directory, reason = _locate(name, path, kind, data_dir)
    if reason is not None:
        return [reason]
    assert spec is not None and directory is not None
    if needs is None:
        needs = ("val",) if spec.task == "fewshot" else ("train", "dev", "test")
    reasons = []
    for need in needs:
        if need not in spec.splits:
            reasons.append(f"{spec.name} has no {need!r} split (its splits: {', '.join(spec.splits)})")
            continue
        file_path = directory / spec.splits[need]
        if need != "train" or split >= 1.0:
            problem = _file_reason(file_path, need, spec.paper_sizes.get(need), spec)
            if problem:
                reasons.append(problem)
            continue
        try:
            subset = subset_file(directory, split, spec)
        except DataError as exc:  # a train_<fraction> folder or broken link
            reasons.append(f"train_{split:g} file {exc}")
            continue
        train_problem = _file_reason(file_path, "train", spec.paper_sizes.get("train"), spec)
        if split_source == "paper" and subset is not None and subset.stat().st_size > 0:
            continue
        if train_problem is None:
            continue
        if locate_data_file(file_path)[1]:  # there but unreadable (a folder, a broken link): say so
            reasons.append(train_problem)
            continue
        key = f"train_{split:g}"
        if split_source == "seeded":
            hint = f"; split_source 'paper' would use {subset.name}" if subset is not None else ""
            reasons.append(f"no train file here to sample {_pct(split)} from ({file_path}{hint})")
        else:
            reasons.append(f"no {key} file and no train file to sample {_pct(split)} from in {directory}")
    return reasons


__all__ = ["REGISTRY", "DatasetSpec", "get_spec", "load_dataset", "paper_size",
           "supervised_datasets", "fewshot_datasets", "metric_of", "reported_metric", "display_name", "display_names",
           "paper_split_sizes", "paper_subset_size", "expected_train_size", "check_available", "subset_file",
           "TASKS"]
