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
* :func:`offline_env` is the environment recon gives every process it starts (its own, ``recon
  ui``'s MLflow server, Ray workers): ``MLFLOW_DISABLE_TELEMETRY=true``, ``RAY_USAGE_STATS_ENABLED=0``,
  ``HF_HUB_DISABLE_TELEMETRY=1``, each only where the user has not set it (set
  ``MLFLOW_DISABLE_TELEMETRY=false`` to send MLflow usage telemetry after all).
* Values of environment variables with secret-looking names (TOKEN, SECRET, PASSWORD, KEY,
  CREDENTIAL, ...) never reach MLflow: params, tags, descriptions, dataset sources and text
  artifacts are redacted before they are logged (:func:`redact`, :func:`secret_values`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from recon.orchestration.study.plan import Trial
from recon.orchestration.tracking.uri import is_remote, prepare_local_store

ROLE = "recon.role"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"           # a run's or an experiment's description (Markdown)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
ML_EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's kind for training runs (not "genai_development")
SOURCE_NAME_TAG, SOURCE_TYPE_TAG, SOURCE_COMMIT_TAG = "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"
DATASET_CONTEXT_TAG = "mlflow.data.context"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"  # the tables of a run (``mlflow.log_table``)
MAX_TAG_VALUE = 8000        # MLflow's limit on a run tag's value
MAX_EXPERIMENT_TAG_VALUE = 5000

# ------------------------------------------------------------------ nothing leaves the machine
#: Opt-outs recon puts in the environment of every process it starts, unless the user set them.
OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",   # MLflow usage telemetry (client, server and UI)
    "RAY_USAGE_STATS_ENABLED": "0",       # Ray's usage stats
    "HF_HUB_DISABLE_TELEMETRY": "1",      # Hugging Face Hub telemetry pings
}


def offline_env(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The opt-out variables as this process should pass them on: the user's value where set, else recon's."""
    env = os.environ if environ is None else environ
    return {name: env.get(name, default) for name, default in OFFLINE_ENV.items()}


def apply_offline_env() -> dict[str, str]:
    """Set the opt-outs in this process (``setdefault``: a user's own setting wins); returns them."""
    for name, default in OFFLINE_ENV.items():
        os.environ.setdefault(name, default)
    return offline_env()


# Before anything in this process imports mlflow (its import starts the telemetry client).
apply_offline_env()

SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|KEY|CREDENTIAL|AUTH|COOKIE|PRIVATE", re.IGNORECASE)
REDACTED = "[redacted]"
_NOT_SECRET = {"true", "false", "none", "null", "yes", "no"}


def secret_values(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Values of environment variables whose names look secret, longest first.

    Short values (under 8 characters), booleans, numbers and existing paths are not secrets
    (``RAY_AUTH_MODE=token``, ``SSH_AUTH_SOCK=/tmp/...``): redacting them would mangle artifacts.
    """
    env = os.environ if environ is None else environ
    out = set()
    for name, value in env.items():
        value = (value or "").strip()
        if not SECRET_NAME.search(name) or len(value) < 8 or value.lower() in _NOT_SECRET or value.isdigit():
            continue
        try:
            if os.path.exists(value):
                continue
        except (OSError, ValueError):
            pass
        out.add(value)
    return sorted(out, key=len, reverse=True)


def _secret_forms(secrets: Iterable[str]) -> list[str]:
    """Each secret as written raw and inside JSON strings (escaped), longest first."""
    forms = set()
    for secret in secrets:
        forms.add(secret)
        forms.add(json.dumps(secret)[1:-1])
    return sorted(forms, key=len, reverse=True)


def redact(text: str, secrets: Optional[Iterable[str]] = None) -> str:
    """``text`` with every secret value (``secret_values()`` by default) replaced by ``[redacted]``."""
    if not isinstance(text, str):
        text = str(text)
    for secret in _secret_forms(secret_values() if secrets is None else secrets):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


MAX_SCANNED_BYTES = 256 * 1024 * 1024


def redacted_copy(src: Path, secrets: Optional[Iterable[str]] = None) -> tuple[Path, Optional[tempfile.TemporaryDirectory]]:
    """``src`` (a file or folder) as it may be logged: itself when no file holds a secret, else a
    temporary copy with the secrets replaced (the caller keeps the returned TemporaryDirectory alive)."""
    forms = [f.encode("utf-8") for f in _secret_forms(secret_values() if secrets is None else secrets)]
    if not forms:
        return src, None
    files = [src] if src.is_file() else [p for p in sorted(src.rglob("*")) if p.is_file()]
    dirty = []
    for path in files:
        try:
            if path.stat().st_size <= MAX_SCANNED_BYTES and any(f in path.read_bytes() for f in forms):
                dirty.append(path)
        except OSError:
            continue
    if not dirty:
        return src, None
    tmp = tempfile.TemporaryDirectory(prefix="recon-redacted-")
    target = Path(tmp.name) / src.name
    if src.is_file():
        shutil.copy2(src, target)
    else:
        shutil.copytree(src, target, symlinks=False)
    for path in dirty:
        copy = target if src.is_file() else target / path.relative_to(src)
        data = copy.read_bytes()
        for form in forms:
            data = data.replace(form, REDACTED.encode())
        copy.write_bytes(data)
    return target, tmp


def log_artifacts_redacted(client, run_id: str, src: Path, artifact_path: Optional[str] = None) -> None:
    """``log_artifacts`` / ``log_artifact`` of ``src`` (a folder or a file) with secret values redacted."""
    path, tmp = redacted_copy(Path(src))
    try:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=artifact_path)
        else:
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    finally:
        if tmp is not None:
            tmp.cleanup()


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


def search_all_runs(client, experiment, filter_string: str) -> list:
    """Every run of ``experiment`` matching ``filter_string``, page by page (none without an experiment)."""
    if experiment is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], filter_string=filter_string, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


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
        self.client.set_experiment_tag(experiment_id, NOTE_TAG, _clip(redact(description), MAX_EXPERIMENT_TAG_VALUE))
        self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG,
                                       (self.experiment.tags or {}).get(EXPERIMENT_KIND_TAG, ML_EXPERIMENT_KIND))
        for key, value in (tags or {}).items():
            self.client.set_experiment_tag(experiment_id, key, _clip(redact(str(value)), MAX_EXPERIMENT_TAG_VALUE))

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
        run_tags = [RunTag(k, _clip(redact(str(v)), MAX_TAG_VALUE)) for k, v in (tags or {}).items()]
        # The tables as ``mlflow.log_table`` writes them (the UI's table viewer and its artifact
        # comparison), replaced rather than appended to when the summary is written again.
        previous = json.loads(self.client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]") or "[]")
        entries = [e for e in previous if not str(e.get("path", "")).startswith("tables/")]
        entries += [{"path": f"tables/{name}.json", "type": "table"} for name in logged]
        run_tags.append(RunTag(LOGGED_ARTIFACTS_TAG, json.dumps(entries)))
        if description:
            run_tags.append(RunTag(NOTE_TAG, _clip(redact(description), MAX_TAG_VALUE)))
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
        tags = {k: _clip(redact(v), MAX_TAG_VALUE) for k, v in tags.items()}
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
        self.client.set_tag(run_id, NOTE_TAG, _clip(redact(trial_description(
            trial, result, finals, [i.dataset.name for i in inputs], self.study_name)), MAX_TAG_VALUE))
        if trial_dir.is_dir():
            self._log_artifacts(run_id, trial_dir)
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


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 40] + "\n\n... (cut: see the artifacts)"


# ------------------------------------------------------------------ datasets as MLflow inputs
_SHA256: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (memoised by path, size and mtime: trials share dataset files)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def _dataset_folder(trial: Trial, data_root: Optional[Path]) -> tuple[Optional[Path], Any]:
    from recon.data_prep.registry import REGISTRY

    spec = REGISTRY.get(trial.dataset)
    if trial.config.get("path"):
        return Path(trial.config["path"]).expanduser(), spec
    if spec is None:
        return None, None
    if data_root is None:
        from recon.data_prep.datadir import existing_data_root

        data = trial.config.get("data") or (trial.config.get("settings") or {}).get("data") or {}
        data_root = existing_data_root(data.get("data_dir"))
    return (Path(data_root) / spec.directory if data_root else None), spec


def dataset_inputs(trial: Trial, result: dict[str, Any], data_root: Optional[Path] = None) -> list:
    """The trial's data as MLflow ``DatasetInput`` s: training data (the ``train_<split>`` file, or
    the train file a seeded subset was drawn from, named so), dev and test; context tags
    ``train`` / ``dev`` / ``test`` (few-shot: ``eval``). Name ``<dataset>/<split>``, source the
    local file, digest the first 16 hex digits of its sha256 (all 64 in the profile)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    folder, spec = _dataset_folder(trial, data_root)
    if folder is None or not folder.is_dir():
        return []
    wanted: list[tuple[str, str, Path, dict]] = []  # (name, context, file, profile extras)
    if trial.kind == "finetune":
        from recon.data_prep.registry import subset_file

        split = float(trial.config.get("split") or 1.0)
        data = trial.config.get("data") or {}
        used = result.get("split_source") or ("full" if split >= 1 else data.get("split_source") or "seeded")
        train_name = (spec.splits.get("train") if spec else None) or "train.txt"
        named = Path(str(result["train_file"])).name if result.get("train_file") else None
        if used == "paper":
            path = folder / named if named and (folder / named).is_file() else subset_file(folder, split, spec)
            if path is not None:
                wanted.append((f"{trial.dataset}/{path.stem}", "train", path, {"subset": "paper file"}))
        else:
            label = "train" if used == "full" else f"train@{split:g} seeded s{trial.seed}"
            wanted.append((f"{trial.dataset}/{label}", "train", folder / train_name,
                           {"subset": used, "fraction": split, "seed": trial.seed}))
        max_eval = data.get("max_eval")
        for split_name in ("dev", "test"):
            name = (spec.splits.get(split_name) if spec else None) or f"{split_name}.txt"
            wanted.append((f"{trial.dataset}/{split_name}", split_name, folder / name,
                           {"max_eval": max_eval} if max_eval else {}))
    elif spec is not None:
        for split_name, name in spec.splits.items():
            wanted.append((f"{trial.dataset}/{split_name}", "eval", folder / name, {}))
    out = []
    for name, context, path, extras in wanted:
        if not path.is_file():
            continue
        sha = file_sha256(path)
        profile = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha, **extras}
        source = json.dumps({"uri": redact(path.resolve().as_uri())})
        dataset = Dataset(name=name, digest=sha[:16], source_type="local", source=source,
                          profile=json.dumps(profile))
        out.append(DatasetInput(dataset, [InputTag(DATASET_CONTEXT_TAG, context)]))
    return out


def trial_description(trial: Trial, result: dict[str, Any], finals: Mapping[str, float], datasets: list[str],
                      study: str) -> str:
    """A trial run's description (Markdown): what it is, its headline figures, its data and notes."""
    from recon.data_prep.registry import display_name

    lines = [f"**{trial.model}** on **{display_name(trial.dataset)} {trial.setting}**, input format "
             f"**{trial.format}**, seed {trial.seed}: trial `{trial.trial_id}` of study *{study}* "
             f"({trial.kind}; tables {', '.join(trial.tables)})."]
    figures = []
    for split in ("test", "dev"):
        if f"{split}_metric" in finals:
            figures.append(f"{split} {trial.metric} **{finals[f'{split}_metric']:.4f}**")
    if figures:
        best = f" at the best dev epoch ({int(finals['best_epoch'])})" if "best_epoch" in finals else ""
        lines += ["", "; ".join(figures) + best + "."]
    if datasets:
        lines += ["", "Data: " + ", ".join(f"`{d}`" for d in datasets) + " (see Datasets used)."]
    notes = result.get("notes")
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in ([notes] if isinstance(notes, str) else notes)]
    lines += ["", "Artifacts: `result.json` (everything the trainer returned), `predictions.jsonl` (test predictions, "
              "read by the study's significance tests and error browser); per-epoch curves under Model metrics "
              "(`epoch/...`)."]
    return "\n".join(lines)


# ------------------------------------------------------------------ the parent run's tables
def paper_table_files(summary_dir: Path) -> dict[str, Path]:
    """Table name -> its CSV in the summary folder (the tables ``tables.write_table`` wrote: a CSV
    with Markdown, HTML and LaTeX siblings), paper tables before their delta tables."""
    found = {p.stem: p for p in sorted(summary_dir.glob("*.csv"))
             if all(p.with_suffix(ext).is_file() for ext in (".md", ".html", ".tex"))}
    return dict(sorted(found.items(), key=lambda kv: (kv[0].endswith("_delta"), kv[0])))


def overview_html(study: str, summary_dir: Path) -> str:
    """One self-contained page: every paper table and delta table (their HTML), every plot (inline)."""
    import base64
    import html

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study)}</title><style>"
             "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}h2{margin-top:1.5em}"
             "img{max-width:100%;border:1px solid #ddd}li{font-size:.9em;color:#555}</style></head><body>",
             f"<h1>Study {html.escape(study)}</h1>",
             "<p>Medians over seeds, x100 (the paper's layout). Every file is under <code>summary/</code> "
             "in this run's artifacts; sortable copies of the tables under <code>tables/</code>.</p>"]
    for name, csv in paper_table_files(summary_dir).items():
        page = csv.with_suffix(".html")
        if page.is_file():
            parts += [f"<h2>{html.escape(name)}</h2>", page.read_text(encoding="utf-8")]
    for plot in sorted(summary_dir.glob("*.png")):
        data = base64.b64encode(plot.read_bytes()).decode()
        parts += [f"<h2>{html.escape(plot.stem)}</h2>", f"<img alt='{html.escape(plot.name)}' src='data:image/png;base64,{data}'>"]
    parts.append("</body></html>")
    return redact("\n".join(parts))


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
                         # the plan's metric, not the logged test_metric: a changed scorer (not part of
                         # the trial id) re-tabulates finished trials without training them again
                         "value": metrics.get(metric_key(f"test_{trial.metric}"), metrics.get("test_metric")),
                         "dev_value": metrics.get(metric_key(f"dev_{trial.metric}"), metrics.get("dev_metric"))})
    columns = ["trial_id", "run_id", "table", "kind", "dataset", "setting", "format", "model", "seed", "metric",
               "value", "dev_value"]
    return pd.DataFrame(rows, columns=columns)
