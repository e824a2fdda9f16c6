"""What every analysis of a study report gets: one :class:`ReportContext` (the study, its trials, their
results and predictions, where to write), and what an analysis is: ``(context) -> files written``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from recon.orchestration.study.spec import StudySpec
from recon.orchestration.study.trial import Trial


@dataclass
class ReportContext:
    """The inputs of a study's report, read once by ``summary.write_summary``.

    ``results``: one row per finished trial and table (labels from the plan, metrics from MLflow);
    ``stats``: per-cell medians, ranges and IQRs; ``predictions``: trial id -> (example identity ->
    ``{gold, pred}``; the identity is ``semeval/test.txt:12`` on every machine, ``recon.orchestration.report.joins``)
    for the fine-tuning trials whose predictions could be read (empty when none); ``predictions_of(trial,
    name="predictions.jsonl")`` gives the path of a trial's predictions file (``view_predictions.jsonl``: its test
    views), None when it has none; ``footnotes``: notes per table; ``shared``: what an earlier
    analysis hands to a later one (the significance tests the tables mark).
    """

    spec: StudySpec
    trials: list[Trial]
    results: Any
    stats: Any
    predictions: dict[str, dict]
    predictions_of: Callable[..., Optional[Path]]
    out_dir: Path
    footnotes: dict[str, list[str]]
    data_dir: Optional[str]
    log: Callable[[str], None] = print
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def compare_to(self) -> dict[str, Optional[str]]:
        """Model name -> the paper's label its cells are compared with (BERT, MTB, CP, CNN)."""
        return {m.name: m.paper_label for m in self.spec.models}


class Analysis(Protocol):
    """A part of the report: reads the context, writes files into ``context.out_dir``, returns them."""

    def __call__(self, context: ReportContext) -> list[Path]: ...


__all__ = ["ReportContext", "Analysis"]
