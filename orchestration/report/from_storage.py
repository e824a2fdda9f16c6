"""A study's finished trials read from its storage instead of MLflow: what the report uses when the tracking
server does not answer at the end of a run.

Every finished trial's ``result.json`` and ``predictions.jsonl`` are in storage before its MLflow run exists
(``recon.orchestration.study.trainable``), so the tables can be built from there: the same rows
:func:`recon.orchestration.study.tracker.results_frame` builds from MLflow, with metrics computed by the same
:func:`~recon.orchestration.study.tracker.final_metrics`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

from recon.core.storage import Storage
from recon.orchestration.study.tracker import final_metrics
from recon.orchestration.study.trainable import RESULTS, result_rel
from recon.orchestration.study.trial import Trial
from recon.orchestration.tracking.client import metric_key

COLUMNS = ["trial_id", "run_id", "table", "kind", "dataset", "setting", "format", "model", "seed", "metric",
           "value", "dev_value"]


def results_from_storage(trials: Iterable[Trial], storage: Storage):
    """One row per finished trial (``result.json`` present) and table, as ``results_frame`` gives them."""
    import pandas as pd

    rows = []
    for trial in trials:
        if not storage.exists(result_rel(trial.trial_id)):
            continue
        metrics = final_metrics(trial, storage.read_json(result_rel(trial.trial_id)))
        for table in trial.tables:
            rows.append({"trial_id": trial.trial_id, "run_id": None, "table": table, "kind": trial.kind,
                         "dataset": trial.dataset, "setting": trial.setting, "format": trial.format,
                         "model": trial.model, "seed": trial.seed, "metric": trial.metric,
                         "value": metrics.get(metric_key(f"test_{trial.metric}"), metrics.get("test_metric")),
                         "dev_value": metrics.get(metric_key(f"dev_{trial.metric}"), metrics.get("dev_metric"))})
    return pd.DataFrame(rows, columns=COLUMNS)


def predictions_from_storage(storage: Storage, into: Path) -> Callable[[Trial], Optional[Path]]:
    """``predictions_of`` for the report: a trial's ``predictions.jsonl`` (or another of its files, such as
    ``view_predictions.jsonl``) downloaded from storage (None if absent)."""
    def predictions_of(trial: Trial, name: str = "predictions.jsonl") -> Optional[Path]:
        rel = f"{RESULTS}/{trial.trial_id}/{name}"
        if not storage.exists(rel):
            return None
        target = into / trial.trial_id / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(rel))
        return target

    return predictions_of


__all__ = ["results_from_storage", "predictions_from_storage"]
