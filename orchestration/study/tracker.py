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
* Pre-training stages log themselves (``recon.orchestration.pretrain.driver``) into the same store and
  experiment, before any trial runs, so the driver is still the only writer at any one time.

What the MLflow UI shows (a dashboard for researchers, not an LLM-tracing page)
-------------------------------------------------------------------------------
* The experiment is tagged ``mlflow.experimentKind = custom_model_development`` (MLflow 3's kind
  for model training, so it opens on the runs table rather than the GenAI overview; MLflow 3.17's
  UI also follows its "workflow type" switch, so ``recon ui`` prints the experiment's URL with
  ``workflowType=machine_learning``), has a description (``mlflow.note.content``) and ``recon.*``
  tags (datasets, models, tables, seeds) to filter by.
* Each trial run has a description, a Source (``recon study <name>`` at the git commit) and its
  data as MLflow dataset inputs: the training file or subset, dev and test, each with a digest
  from the file's sha256 (``dataset_inputs``), so the Dataset column is filled and filterable.
* The parent run has the paper-layout tables as ``mlflow.log_table`` JSON (``tables/``), an
  ``overview.html`` with every table and plot (rendered by the artifact viewer) and a description
  with the tables inline, pointing at the artifacts.

Nothing leaves the machine
--------------------------
* Telemetry off and secrets redacted: ``recon.core.privacy``. :func:`offline_env` is the environment recon gives every process it starts (its own, ``recon
  ui``'s MLflow server, Ray workers): ``MLFLOW_DISABLE_TELEMETRY=true``, ``RAY_USAGE_STATS_ENABLED=0``,
  ``HF_HUB_DISABLE_TELEMETRY=1``, each only where the user has not set it (set
  ``MLFLOW_DISABLE_TELEMETRY=false`` to send MLflow usage telemetry after all).
* Values of environment variables with secret-looking names (TOKEN, SECRET, PASSWORD, KEY,
  CREDENTIAL, ...) never reach MLflow: params, tags, descriptions, dataset sources and text
  artifacts are redacted before they are logged (:func:`redact`, :func:`secret_values`).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from recon.core.privacy import redact
from recon.orchestration.study.lineage import dataset_inputs, trial_description
from recon.orchestration.study.overview import overview_html, paper_table_files
from recon.orchestration.study.trial import Trial
from recon.orchestration.tracking.client import (EXPERIMENT_KIND_TAG, LOGGED_ARTIFACTS_TAG, MAX_EXPERIMENT_TAG_VALUE,
                                                 MAX_TAG_VALUE, ML_EXPERIMENT_KIND, NOTE_TAG, PARENT_TAG, ROLE,
                                                 SOURCE_COMMIT_TAG, SOURCE_NAME_TAG, SOURCE_TYPE_TAG, clip,
                                                 flatten, git_commit, log_artifacts_redacted, metric_key,
                                                 numeric_items, search_all_runs)
from recon.orchestration.tracking.uri import is_remote, prepare_local_store


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
        self.data_root: Optional[Path] = None  # where trial datasets are read (default: the trial's data_dir)
        self._encoder_models: dict[str, str] = {}  # stage content hash -> its MLflow model id
        if experiment is not None and create:
            self._mark_experiment()

    def _mark_experiment(self) -> None:
        """An ML-training experiment with a description, unless someone already gave it others."""
        tags = self.experiment.tags or {}
        if EXPERIMENT_KIND_TAG not in tags:
            self.client.set_experiment_tag(self.experiment.experiment_id, EXPERIMENT_KIND_TAG, ML_EXPERIMENT_KIND)
        if NOTE_TAG not in tags:
            self.client.set_experiment_tag(self.experiment.experiment_id, NOTE_TAG, redact(
                f"recon study **{self.study_name}**: one run per trial (a grid cell and seed), nested under the "
                f"parent run *{self.study_name} (study)*, which holds the paper-layout tables and plots."))
        self.client.set_experiment_tag(self.experiment.experiment_id, "recon.study", self.study_name)

    def describe_experiment(self, description: str, tags: Optional[Mapping[str, str]] = None) -> None:
        """The experiment's description (Markdown) and ``recon.*`` tags to filter experiments by."""
        experiment_id = self.experiment.experiment_id
        self.client.set_experiment_tag(experiment_id, NOTE_TAG, clip(redact(description), MAX_EXPERIMENT_TAG_VALUE))
        self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG,
                                       (self.experiment.tags or {}).get(EXPERIMENT_KIND_TAG, ML_EXPERIMENT_KIND))
        for key, value in (tags or {}).items():
            self.client.set_experiment_tag(experiment_id, key, clip(redact(str(value)), MAX_EXPERIMENT_TAG_VALUE))

    def _source_tags(self) -> dict[str, str]:
        """What the runs table's Source column shows: the study, at the code's commit."""
        tags = {SOURCE_NAME_TAG: f"recon study {self.study_name}", SOURCE_TYPE_TAG: "LOCAL"}
        if self._commit != "unknown":
            tags[SOURCE_COMMIT_TAG] = self._commit
        return tags

    def _log_artifacts(self, run_id: str, src: Path, artifact_path: Optional[str] = None) -> None:
        log_artifacts_redacted(self.client, run_id, src, artifact_path)

    @property
    def exists(self) -> bool:
        return self.experiment is not None

    # ------------------------------------------------------------ queries
    def _search(self, filter_string: str) -> list:
        return search_all_runs(self.client, self.experiment, filter_string)

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

    def failed_trial_runs(self) -> dict[str, Any]:
        """Trial id -> its FAILED run, for trials that have no FINISHED run."""
        runs = self._search(f"tags.`{ROLE}` = 'trial'")
        finished = {r.data.tags["trial_id"] for r in runs if r.info.status == "FINISHED"}
        return {r.data.tags["trial_id"]: r for r in runs
                if r.info.status == "FAILED" and r.data.tags["trial_id"] not in finished}

    def log_failed_trial(self, trial: Trial, error: str, attempts: int) -> Optional[str]:
        """A FAILED run holding the trial's last error (its retries used up); replaced when it later succeeds.

        ``finished_trial_ids`` ignores FAILED runs, so ``recon study resume`` runs the trial again.
        """
        existing = self._search(f"tags.`{ROLE}` = 'trial' and tags.trial_id = '{trial.trial_id}'")
        if any(r.info.status == "FINISHED" for r in existing):
            return None
        for run in existing:
            self.client.delete_run(run.info.run_id)
        tags = {ROLE: "trial", "trial_id": trial.trial_id, PARENT_TAG: self.study_run_id(), "kind": trial.kind,
                "dataset": trial.dataset, "setting": trial.setting, "format": trial.format, "model": trial.model,
                "seed": str(trial.seed), "tables": ",".join(trial.tables), "metric": trial.metric,
                "git_commit": self._commit, "error": redact(error)[:5000], "attempts": str(attempts)}
        run = self.client.create_run(self.experiment.experiment_id, tags=tags,
                                     run_name=f"{trial.model} {trial.dataset} {trial.setting} {trial.format} "
                                              f"s{trial.seed} (failed)")
        self.client.set_terminated(run.info.run_id, "FAILED")
        return run.info.run_id

    # ------------------------------------------------------------ study (parent) run
    def study_run_id(self) -> str:
        runs = self._search(f"tags.`{ROLE}` = 'study'")
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment.experiment_id, run_name=f"{self.study_name} (study)",
                                     tags={ROLE: "study", "git_commit": self._commit, **self._source_tags(),
                                           NOTE_TAG: f"The parent run of study **{self.study_name}**: its tables "
                                                     "and plots are logged here when the study's trials finish."})
        return run.info.run_id

    def end_study_run(self, run_id: str, status: str) -> None:
        """End the parent run as ``FAILED`` / ``KILLED`` when the driver stops on an error or an interrupt (the
        summary ends it ``FINISHED``); a store that cannot be reached then is not a second error."""
        try:
            self.client.set_terminated(run_id, status)
        except Exception:  # noqa: BLE001 - the error that stopped the study is the one to show
            pass

    def log_study_summary(self, metrics: dict[str, float], artifacts_dir: Path, spec_file: Optional[Path],
                          description: Optional[str] = None, tags: Optional[Mapping[str, str]] = None) -> str:
        """Medians as metrics, the summary folder as artifacts, the paper tables where the UI renders
        them (``tables/<name>.json`` from ``mlflow.log_table``, ``overview.html``), the trials'
        datasets as inputs, and ``description`` (Markdown) as the run's description."""
        from mlflow.entities import Metric, RunTag

        run_id = self.study_run_id()
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])
        self._log_artifacts(run_id, Path(artifacts_dir), artifact_path="summary")
        if spec_file is not None:
            self._log_artifacts(run_id, Path(spec_file), artifact_path="spec")
        with tempfile.TemporaryDirectory(prefix="recon-overview-") as tmp:
            logged = self._log_tables(run_id, Path(artifacts_dir), Path(tmp) / "tables")
            page = Path(tmp) / "overview.html"
            page.write_text(overview_html(self.study_name, Path(artifacts_dir)), encoding="utf-8")
            self._log_artifacts(run_id, page)
        self._log_parent_inputs(run_id)
        run_tags = [RunTag(k, clip(redact(str(v)), MAX_TAG_VALUE)) for k, v in (tags or {}).items()]
        # The tables as ``mlflow.log_table`` writes them (the UI's table viewer and its artifact
        # comparison), replaced rather than appended to when the summary is written again.
        previous = json.loads(self.client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]") or "[]")
        entries = [e for e in previous if not str(e.get("path", "")).startswith("tables/")]
        entries += [{"path": f"tables/{name}.json", "type": "table"} for name in logged]
        run_tags.append(RunTag(LOGGED_ARTIFACTS_TAG, json.dumps(entries)))
        if description:
            run_tags.append(RunTag(NOTE_TAG, clip(redact(description), MAX_TAG_VALUE)))
        if run_tags:
            self.client.log_batch(run_id, tags=run_tags)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def _log_tables(self, run_id: str, summary_dir: Path, staging: Path) -> list[str]:
        """The paper tables as ``tables/<name>.json`` (pandas "split" JSON, what ``log_table`` writes)."""
        import pandas as pd

        staging.mkdir(parents=True, exist_ok=True)
        names = []
        for name, csv in paper_table_files(summary_dir).items():
            try:
                pd.read_csv(csv).to_json(staging / f"{name}.json", orient="split", index=False)
                names.append(name)
            except Exception:  # noqa: BLE001 - the summary folder still has every table
                continue
        if names:
            self._log_artifacts(run_id, staging, artifact_path="tables")
        return names

    def _log_parent_inputs(self, run_id: str) -> None:
        """Every dataset the trials read, as inputs of the parent run too (its Dataset column)."""
        from mlflow.entities import DatasetInput

        seen, inputs = set(), []
        for run in self.trial_runs().values():
            for item in getattr(run.inputs, "dataset_inputs", None) or []:
                key = (item.dataset.name, item.dataset.digest)
                if key not in seen:
                    seen.add(key)
                    inputs.append(DatasetInput(item.dataset, list(item.tags or [])))
        for i in range(0, len(inputs), 100):
            try:
                self.client.log_inputs(run_id, datasets=inputs[i:i + 100])
            except Exception:  # noqa: BLE001 - inputs are a convenience of the UI
                return

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
                "git_commit": self._commit, "study": self.study_name, **self._source_tags()}
        if result.get("split_source"):  # which training subset was used: paper file, seeded, or full
            tags["split_source"] = str(result["split_source"])
        tags = {k: clip(redact(v), MAX_TAG_VALUE) for k, v in tags.items()}
        run = self.client.create_run(self.experiment.experiment_id, run_name=f"{trial.model} {trial.dataset} "
                                     f"{trial.setting} {trial.format} s{trial.seed}", tags=tags)
        run_id = run.info.run_id
        params = [Param(k, redact(v)[:6000]) for k, v in flatten(trial.config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])
        now = int(time.time() * 1000)
        finals = final_metrics(trial, result)
        metrics = [Metric(k, v, now, 0) for k, v in finals.items()]
        for entry in result.get("history") or []:
            step = int(entry.get("epoch", 0))
            metrics += [Metric(f"epoch/{k}", v, now, step) for k, v in numeric_items(entry).items() if k != "epoch"]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        notes = result.get("notes")
        if notes:
            self.client.set_tag(run_id, "notes", redact(notes if isinstance(notes, str) else json.dumps(notes))[:5000])
        inputs = []
        try:
            inputs = dataset_inputs(trial, result, self.data_root)
            if inputs:
                self.client.log_inputs(run_id, datasets=inputs)
        except Exception:  # noqa: BLE001 - a dataset the driver cannot read: the run is logged without inputs
            inputs = []
        self._link_encoder_model(trial, run_id)
        self.client.set_tag(run_id, NOTE_TAG, clip(redact(trial_description(
            trial, result, finals, [i.dataset.name for i in inputs], self.study_name)), MAX_TAG_VALUE))
        if trial_dir.is_dir():
            self._log_artifacts(run_id, trial_dir)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def add_views(self, trial: Trial, run_id: str, result: dict[str, Any], views: Iterable[str],
                  files: Iterable[Path]) -> None:
        """Test views scored after the trial's run was logged (from its kept weights,
        ``recon.orchestration.study.kept``) into that same FINISHED run: their ``view/<name>/...`` metrics, the
        merged ``view_predictions.jsonl`` and ``result.json`` (replacing the logged ones), and a
        ``recon.views_from_weights`` tag naming every view added so."""
        from mlflow.entities import Metric

        views = list(views)
        now = int(time.time() * 1000)
        figures = view_metrics(trial, {**result, "views": {v: (result.get("views") or {})[v] for v in views}})
        metrics = [Metric(k, v, now, 0) for k, v in figures.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        for path in files:
            self._log_artifacts(run_id, Path(path))
        tags = self.client.get_run(run_id).data.tags
        added = list(dict.fromkeys([*filter(None, tags.get("recon.views_from_weights", "").split(",")), *views]))
        self.client.set_tag(run_id, "recon.views_from_weights", ",".join(added))

    def _link_encoder_model(self, trial: Trial, run_id: str) -> Optional[str]:
        """A trial that starts from one of the study's pre-training stages takes the stage's MLflow model
        (found by the stage's content hash, the trial config's ``source_identity``) as an input of its run,
        and names it in a tag; None when the trial has no such start or the store has no such model."""
        from recon.orchestration.pretrain.mlflow_model import find_encoder_model, link_model_input

        identity = (trial.config or {}).get("source_identity")
        if not identity:
            return None
        if identity not in self._encoder_models:
            try:
                model = find_encoder_model(self.client, self.experiment.experiment_id, stage_hash=identity)
            except Exception:  # noqa: BLE001 - a store without LoggedModels: the run is logged without the link
                model = None
            if model is None:
                return None  # not cached: the stage may log its model later in this process
            self._encoder_models[identity] = model.model_id
        model_id = self._encoder_models[identity]
        link_model_input(self.client, run_id, model_id)
        self.client.set_tag(run_id, "recon.encoder_model", model_id)
        return model_id

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
    out.update(view_metrics(trial, result))
    return out


def view_metrics(trial: Trial, result: dict[str, Any]) -> dict[str, float]:
    """Per test view of the trained weights (``result["views"]``, ``recon.models.train.views``):
    ``view/<name>/test_<metric>`` (every test figure), ``view/<name>/test_metric`` (the trial's metric),
    ``view/<name>/drop`` (original minus view, in that metric), ``flip_share``, ``flip_share_changed``,
    ``n_changed``; a view that failed logs ``view/<name>/failed`` = 1 (its error is in the run's notes)."""
    out: dict[str, float] = {}
    original = (result.get("test") or {}).get(trial.metric)
    for name, view in (result.get("views") or {}).items():
        if "error" in view:
            out[metric_key("view", name, "failed")] = 1.0
            continue
        figures = {f"test_{k}": v for k, v in (view.get("test") or {}).items()}
        figures.update({k: view.get(k) for k in ("flip_share", "flip_share_changed", "n_changed")})
        value = (view.get("test") or {}).get(trial.metric)
        if isinstance(value, (int, float)):
            figures["test_metric"] = value
            if isinstance(original, (int, float)):
                figures["drop"] = float(original) - float(value)
        out.update({metric_key("view", name, k): v for k, v in numeric_items(figures).items()})
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
                         # the plan's metric, not the logged test_metric: a changed scorer (not part of
                         # the trial id) re-tabulates finished trials without training them again
                         "value": metrics.get(metric_key(f"test_{trial.metric}"), metrics.get("test_metric")),
                         "dev_value": metrics.get(metric_key(f"dev_{trial.metric}"), metrics.get("dev_metric"))})
    columns = ["trial_id", "run_id", "table", "kind", "dataset", "setting", "format", "model", "seed", "metric",
               "value", "dev_value"]
    return pd.DataFrame(rows, columns=columns)
