"""MLflow tracking of a study: one writer (the driver), idempotent by trial id.

Design
------
* One MLflow experiment per study (named after the study), artifacts under
  ``<output_dir>/artifacts`` unless the experiment already exists elsewhere (remote stores).
* Default store: a local SQLite file ``<output_dir>/mlflow.db`` owned by the DRIVER. Trials never
  talk to MLflow: they write ``result.json`` (and ``predictions.jsonl``/``metrics.json``) into their
  own directory ``<output_dir>/trials/<trial_id>/`` and report per-epoch metrics to Tune. The driver
  logs each finished trial, so SQLite only ever sees one writer and "database is locked" cannot
  happen however many trials run at once. ``--tracking-uri`` points at a remote server for clusters.
* One run per trial, tagged ``recon.role=trial`` and ``trial_id``, plus dataset / setting / format /
  model / seed / kind / tables / git commit; params = every field of the trial config (flattened);
  metrics = per-epoch history as ``epoch/<name>`` (step = epoch) and the final ``dev_*`` / ``test_*`` metrics, with
  ``test_metric`` / ``dev_metric`` holding the dataset's paper metric; artifacts = the trial dir.
* Idempotency: before creating a run the driver looks the trial id up; a FINISHED run means the
  trial is done and is skipped, an unfinished one (driver killed while logging) is deleted and
  logged again. So a resumed study never duplicates runs.
* One parent run per study (``recon.role=study``), whose children are the trial runs; it holds the
  medians (and min/max/IQR) per cell as metrics and the tables, plots and pilot analysis as artifacts.
* Pre-training stages log themselves (``recon.orchestration.pretrain``) into the same store and
  experiment, before any trial runs, so the driver is still the only writer at any one time.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from .plan import Trial
from .tracking_uri import is_remote, prepare_local_store

ROLE = "recon.role"
PARENT_TAG = "mlflow.parentRunId"


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit of the code running the study ('unknown' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(payload: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(payload, dict):
        for key, value in payload.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    out[prefix[:-1]] = json.dumps(payload) if isinstance(payload, (list, tuple)) else str(payload)
    return out


def metric_key(*parts: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_ - . / space :``)."""
    return "/".join(re.sub(r"[^\w.\- :]", "_", p.replace("+", "")) for p in parts)


def numeric_items(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[metric_key(f"{prefix}{key}")] = float(value)
    return out


class StudyTracker:
    """The driver's handle on a study's MLflow experiment."""

    def __init__(self, tracking_uri: str, study_name: str, artifact_root: Optional[Path] = None,
                 create: bool = True) -> None:
        from mlflow.tracking import MlflowClient

        prepare_local_store(tracking_uri)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None and create:
            # A local store keeps artifacts beside the study; a tracking server decides where its
            # artifacts go (its --artifacts-destination), so recon forces no file:// location on it.
            location = artifact_root.resolve().as_uri() if artifact_root and not is_remote(tracking_uri) else None
            experiment_id = self.client.create_experiment(study_name, artifact_location=location)
            experiment = self.client.get_experiment(experiment_id)
        self.experiment = experiment
        self.study_name = study_name
        self._commit = git_commit()

    @property
    def exists(self) -> bool:
        return self.experiment is not None

    # ------------------------------------------------------------ queries
    def _search(self, filter_string: str) -> list:
        if self.experiment is None:
            return []
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment.experiment_id], filter_string=filter_string,
                                           max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def trial_runs(self, finished_only: bool = True) -> dict[str, Any]:
        """Trial id -> run (the FINISHED ones by default)."""
        runs = self._search(f"tags.`{ROLE}` = 'trial'")
        out = {}
        for run in runs:
            if finished_only and run.info.status != "FINISHED":
                continue
            out[run.data.tags["trial_id"]] = run
        return out

    def finished_trial_ids(self) -> set[str]:
        return set(self.trial_runs())

    # ------------------------------------------------------------ study (parent) run
    def study_run_id(self) -> str:
        runs = self._search(f"tags.`{ROLE}` = 'study'")
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment.experiment_id, run_name=f"{self.study_name} (study)",
                                     tags={ROLE: "study", "git_commit": self._commit})
        return run.info.run_id

    def log_study_summary(self, metrics: dict[str, float], artifacts_dir: Path, spec_file: Optional[Path]) -> str:
        from mlflow.entities import Metric

        run_id = self.study_run_id()
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])
        self.client.log_artifacts(run_id, str(artifacts_dir), artifact_path="summary")
        if spec_file is not None:
            self.client.log_artifact(run_id, str(spec_file), artifact_path="spec")
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    # ------------------------------------------------------------ trial runs
    def log_trial(self, trial: Trial, result: dict[str, Any], trial_dir: Path) -> Optional[str]:
        """Log one finished trial unless a FINISHED run with its id exists; returns the run id or None."""
        from mlflow.entities import Metric, Param

        existing = self._search(f"tags.`{ROLE}` = 'trial' and tags.trial_id = '{trial.trial_id}'")
        for run in existing:
            if run.info.status == "FINISHED":
                return None
            self.client.delete_run(run.info.run_id)  # half-logged by a killed driver: log it again
        parent = self.study_run_id()
        tags = {ROLE: "trial", "trial_id": trial.trial_id, PARENT_TAG: parent, "kind": trial.kind,
                "dataset": trial.dataset, "setting": trial.setting, "format": trial.format, "model": trial.model,
                "seed": str(trial.seed), "tables": ",".join(trial.tables), "metric": trial.metric,
                "git_commit": self._commit}
        if result.get("split_source"):  # which training subset was used: paper file, seeded, or full
            tags["split_source"] = str(result["split_source"])
        run = self.client.create_run(self.experiment.experiment_id, run_name=f"{trial.model} {trial.dataset} "
                                     f"{trial.setting} {trial.format} s{trial.seed}", tags=tags)
        run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in flatten(trial.config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in final_metrics(trial, result).items()]
        for entry in result.get("history") or []:
            step = int(entry.get("epoch", 0))
            metrics += [Metric(f"epoch/{k}", v, now, step) for k, v in numeric_items(entry).items() if k != "epoch"]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        notes = result.get("notes")
        if notes:
            self.client.set_tag(run_id, "notes", (notes if isinstance(notes, str) else json.dumps(notes))[:5000])
        if trial_dir.is_dir():
            self.client.log_artifacts(run_id, str(trial_dir))
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Optional[Path]:
        """A trial artifact as a local file, or None when the run has no such artifact."""
        import os

        import mlflow.artifacts

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                            dst_path=str(dst), tracking_uri=self.tracking_uri))
        except Exception:  # noqa: BLE001 - missing artifact: the caller reports it
            return None


def final_metrics(trial: Trial, result: dict[str, Any]) -> dict[str, float]:
    """``dev_*`` / ``test_*`` metrics of a trial result, and ``test_metric`` / ``dev_metric``.

    ``test_metric`` is the dataset's paper metric (micro-F1 or accuracy) on the test set at the best
    dev epoch; few-shot results without a ``test`` dict are read from their top level.
    """
    out: dict[str, float] = {}
    for split in ("dev", "test"):
        out.update(numeric_items(result.get(split) or {}, f"{split}_"))
    if trial.kind == "fewshot" and not result.get("test"):
        out.update(numeric_items({k: v for k, v in result.items() if k not in ("history",)}, "test_"))
    for split in ("dev", "test"):
        key = metric_key(f"{split}_{trial.metric}")
        if key in out:
            out[f"{split}_metric"] = out[key]
    for key in ("best_epoch", "n_train", "seconds"):
        if isinstance(result.get(key), (int, float)):
            out[key] = float(result[key])
    # Fidelity counters: inputs windowed / entities cut per split, bad records skipped by reason.
    for split, counts in (result.get("truncation") or {}).items():
        out.update(numeric_items({k: v for k, v in counts.items() if k != "examples"}, f"{split}_"))
    for reason, count in (result.get("skipped_records") or {}).items():
        out[metric_key(f"skipped/{reason}")] = float(count)
    return out


def results_frame(tracker: StudyTracker, trials: Iterable[Trial]):
    """One row per finished trial of the plan: its labels from the plan, metrics from MLflow."""
    import pandas as pd

    runs = tracker.trial_runs()
    rows = []
    for trial in trials:
        run = runs.get(trial.trial_id)
        if run is None:
            continue
        metrics = run.data.metrics
        for table in trial.tables:
            rows.append({"trial_id": trial.trial_id, "run_id": run.info.run_id, "table": table, "kind": trial.kind,
                         "dataset": trial.dataset, "setting": trial.setting, "format": trial.format,
                         "model": trial.model, "seed": trial.seed, "metric": trial.metric,
                         "value": metrics.get("test_metric"), "dev_value": metrics.get("dev_metric")})
    columns = ["trial_id", "run_id", "table", "kind", "dataset", "setting", "format", "model", "seed", "metric",
               "value", "dev_value"]
    return pd.DataFrame(rows, columns=columns)
