"""Known benchmarks and how to load them: relative files, format kind, metric, sequence length.

    from recon.data_prep.registry import load_dataset
    ds = load_dataset("semeval")                         # from the data directory (see datadir.py)
    ds = load_dataset(path="/data/mine", kind="opennre")  # any directory with train/dev/test files

Splits that are absent locally (Wiki80 train/test, FewRel train_wiki) are reported in
``Dataset.notes``/``Dataset.missing`` with the paper's sizes instead of failing; a dataset with no
file at all raises :class:`DatasetNotFound`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .dataset import Dataset
from .datadir import how_to_get, resolve_dataset_dir
from .errors import DatasetNotFound, ReconError
from .loaders import KINDS, LoadReport, check_labels, find_negative, find_split_file, load_file, read_rel2id

SUPERVISED_LENGTH = 100  # Appendix B
FEWSHOT_LENGTH = 128
PAPER_FRACTIONS = (0.01, 0.1)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    directory: str
    kind: str
    splits: dict[str, str]  # split -> file name inside directory
    metric: str
    max_length: int = SUPERVISED_LENGTH
    paper_splits: dict[str, str] = field(default_factory=dict)  # "train_0.01" -> file name
    rel2id: str | None = "rel2id.json"
    paper_sizes: dict[str, int] = field(default_factory=dict)


def _supervised(name: str, kind: str, metric: str, ext: str, sizes: dict[str, int],
                paper_splits: bool = True) -> DatasetSpec:
    return DatasetSpec(
        name=name, directory=name, kind=kind,
        splits={s: f"{s}{ext}" for s in ("train", "dev", "test")}, metric=metric,
        paper_splits={f"train_{p:g}": f"train_{p:g}{ext}" for p in PAPER_FRACTIONS} if paper_splits else {},
        rel2id="rel2id.json" if kind != "tacred" else None, paper_sizes=sizes,
    )


REGISTRY: dict[str, DatasetSpec] = {
    "semeval": _supervised("semeval", "opennre", "micro_f1", ".txt",
                           {"train": 6507, "dev": 1493, "test": 2717, "train_0.01": 73, "train_0.1": 660}),
    "chemprot": _supervised("chemprot", "chemprot", "micro_f1", ".txt",
                            {"train": 4169, "dev": 2427, "test": 3469, "train_0.01": 49, "train_0.1": 423}),
    "wiki80": _supervised("wiki80", "opennre", "accuracy", ".txt",
                          {"train": 39200, "dev": 5600, "test": 11200, "train_0.01": 400, "train_0.1": 3920}),
    "tacred": _supervised("tacred", "tacred", "micro_f1", ".json",
                          {"train": 68124, "dev": 22631, "test": 15509, "train_0.01": 703, "train_0.1": 6833},
                          paper_splits=False),
    "fewrel": DatasetSpec("fewrel", "fewrel", "fewrel", {"train": "train_wiki.json", "val": "val_wiki.json"},
                          "accuracy", FEWSHOT_LENGTH, rel2id=None, paper_sizes={"train": 44800, "val": 11200}),
    "fewrel-pubmed": DatasetSpec("fewrel-pubmed", "fewrel", "fewrel", {"val": "val_pubmed.json"},
                                 "accuracy", FEWSHOT_LENGTH, rel2id=None, paper_sizes={"val": 1000}),
}
KIND_METRIC = {"opennre": "micro_f1", "tacred": "micro_f1", "chemprot": "micro_f1", "fewrel": "accuracy"}


def get_spec(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise ReconError(f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)} "
                         "(or use --path DIR --kind opennre|tacred|chemprot|fewrel)")
    return REGISTRY[name]


def _spec_for_path(path: Path, kind: str | None) -> DatasetSpec:
    if kind not in KINDS:
        raise ReconError(f"--path needs --kind, one of {', '.join(KINDS)} (got {kind!r})")
    if not path.is_dir():
        raise DatasetNotFound(f"--path {path} is not a directory")
    split_names = ("train", "val", "test", "dev") if kind == "fewrel" else ("train", "dev", "test")
    splits = {s: f.name for s in split_names if (f := find_split_file(path, s)) is not None}
    if not splits:
        raise DatasetNotFound(f"no train/dev/test file (.txt, .jsonl or .json) in {path}")
    paper = {f"train_{p:g}": f.name for p in PAPER_FRACTIONS
             if (f := find_split_file(path, f"train_{p:g}")) is not None}
    return DatasetSpec(path.name or str(path), str(path), kind, splits, KIND_METRIC[kind],
                       FEWSHOT_LENGTH if kind == "fewrel" else SUPERVISED_LENGTH, paper_splits=paper,
                       rel2id="rel2id.json" if (path / "rel2id.json").is_file() else None)


def load_dataset(name: str | None = None, *, path: str | None = None, kind: str | None = None,
                 data_dir: str | None = None, errors: str = "raise") -> Dataset:
    """Load a registered dataset by ``name``, or any directory by ``path`` + ``kind``."""
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
    for split, file_name in spec.splits.items():
        file_path = directory / file_name
        if not file_path.is_file():
            missing.append(split)
            size = spec.paper_sizes.get(split)
            notes.append(f"{file_name} not available locally" + (f" (paper: {size:,} instances)" if size else ""))
            continue
        files[split] = str(file_path)
        splits[split] = load_file(file_path, spec.kind, errors, report)
    for key, file_name in spec.paper_splits.items():
        if (directory / file_name).is_file():
            files[key] = str(directory / file_name)
    if not splits:
        raise DatasetNotFound(f"dataset {spec.name!r}: none of {', '.join(spec.splits.values())} exists in "
                              f"{directory}. {how_to_get(spec.name)}")
    if spec.rel2id and (directory / spec.rel2id).is_file():
        rel2id_path = directory / spec.rel2id
        files["rel2id"] = str(rel2id_path)
        labels = read_rel2id(rel2id_path)
        splits = {s: check_labels(xs, labels, rel2id_path, errors, report) for s, xs in splits.items()}
    else:
        labels = sorted({ex.label for xs in splits.values() for ex in xs})
    report.loaded = sum(len(xs) for xs in splits.values())
    return Dataset(name=spec.name, splits=splits, labels=labels, negative_label=find_negative(labels),
                   metric=spec.metric, max_length=spec.max_length, files=files, notes=notes,
                   kind=spec.kind, missing=missing, report=report)


def load_paper_subset(dataset: Dataset, fraction: float, errors: str = "raise"):
    """The shipped ``train_<fraction>`` file of ``dataset``, loaded as-is."""
    key = f"train_{fraction:g}"
    if key not in dataset.files:
        raise DatasetNotFound(f"dataset {dataset.name!r} has no paper split file {key} "
                              f"(paper fractions: {', '.join(f'{p:g}' for p in PAPER_FRACTIONS)})")
    examples = load_file(dataset.files[key], dataset.kind, errors)
    if "rel2id" in dataset.files:
        examples = check_labels(examples, dataset.labels, dataset.files["rel2id"], errors)
    return examples


def paper_size(name: str, split: str) -> int | None:
    return REGISTRY[name].paper_sizes.get(split) if name in REGISTRY else None


__all__ = ["REGISTRY", "DatasetSpec", "get_spec", "load_dataset", "load_paper_subset", "paper_size"]
