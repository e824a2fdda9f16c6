"""MLflow mechanics every room's writer shares: tag names, metric names, params, paged searches, and
artifacts logged with secrets redacted (``recon.core.privacy``). Importing it turns telemetry off first."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Optional

from recon.core.privacy import redacted_copy  # noqa: F401  (also applies the telemetry opt-outs)

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



def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 40] + "\n\n... (cut: see the artifacts)"



__all__ = ["ROLE", "PARENT_TAG", "NOTE_TAG", "EXPERIMENT_KIND_TAG", "ML_EXPERIMENT_KIND", "DATASET_CONTEXT_TAG",
           "LOGGED_ARTIFACTS_TAG", "MAX_TAG_VALUE", "MAX_EXPERIMENT_TAG_VALUE", "log_artifacts_redacted", "git_commit",
           "flatten", "metric_key", "numeric_items", "search_all_runs", "clip"]
