"""The bundle every consumer gets from :func:`recon.data_prep.registry.load_dataset`."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from recon.data_prep.example import RelationExample
from recon.data_prep.loaders import LoadReport


@dataclass
class Dataset:
    """A loaded benchmark: its splits, label inventory, negative class, metric and provenance.

    ``labels`` follows rel2id order when the dataset ships one (so label ids match the authors'),
    otherwise the sorted label set. ``negative_label`` is found by name, never assumed to be id 0.
    ``files`` maps split names (and the paper's subset files ``train_0.01``/``train_0.1``, and
    ``rel2id``) to the paths used; ``notes`` says what is missing locally.

    ``on_error`` is the bad-record policy the dataset was loaded with ("raise" | "skip"); later loads
    (the paper's subset files) use it too. With "skip", ``report`` (and the ``skipped`` shortcut)
    counts the skipped records by reason, with the first few locations of each.
    ``directory`` is the folder the files came from.
    """

    name: str
    splits: dict[str, list[RelationExample]]
    labels: list[str]
    negative_label: str | None
    metric: str
    max_length: int
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kind: str = "opennre"
    missing: list[str] = field(default_factory=list)  # split names expected but absent locally
    report: LoadReport = field(default_factory=LoadReport)
    on_error: str = "raise"
    directory: str | None = None
    task: str = "supervised"  # "supervised" | "fewshot"
    display_name: str | None = None

    @property
    def skipped(self) -> Counter:
        """Skipped records by reason code, e.g. ``Counter({"empty_name": 3, "span_out_of_range": 1})``."""
        return self.report.skipped

    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}
