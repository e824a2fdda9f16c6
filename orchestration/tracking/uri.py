"""MLflow tracking URIs: the one place that knows what a ``sqlite:///`` URI looks like.

Where a run logs: its ``--tracking-uri`` / spec's ``tracking_uri``, else ``$MLFLOW_TRACKING_URI`` (what
every launcher -- Ray Jobs, Slurm, KubeRay, ``cluster.yaml`` -- gives a job), else a local store: a
study's ``sqlite:///<output_dir>/mlflow.db``. Ray workers do not share the driver's working directory,
so relative forms are made absolute before they cross a process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

SQLITE_PREFIX = "sqlite:///"
DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_TRACKING_URI = SQLITE_PREFIX + DEFAULT_DB_NAME
ENV_VAR = "MLFLOW_TRACKING_URI"


def chosen_tracking_uri(given: Optional[str], local_default: str) -> str:
    """``given`` (a flag or a spec's field), else ``$MLFLOW_TRACKING_URI``, else ``local_default``."""
    return given or os.environ.get(ENV_VAR) or local_default


def sqlite_uri(path: str | Path) -> str:
    """The tracking URI of an SQLite store at ``path`` (made absolute)."""
    return SQLITE_PREFIX + str(Path(path).expanduser().resolve())


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI, None for any other store."""
    return Path(uri[len(SQLITE_PREFIX):]) if uri.startswith(SQLITE_PREFIX) else None


def is_remote(uri: str) -> bool:
    """An MLflow tracking server (http/https/databricks) rather than a local store."""
    return uri.startswith(("http://", "https://", "databricks"))


def absolute_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` (or a plain directory, MLflow's file store) absolute."""
    path = sqlite_path(uri)
    if path is not None:
        return uri if path.is_absolute() else sqlite_uri(path)
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def local_store_exists(uri: str) -> bool:
    """False only for a local SQLite store whose file is not there yet."""
    path = sqlite_path(uri)
    return path is None or path.is_file()


def prepare_local_store(uri: str) -> None:
    """Create the folder of a local SQLite store so MLflow can create the file."""
    path = sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


__all__ = ["SQLITE_PREFIX", "DEFAULT_TRACKING_URI", "ENV_VAR", "chosen_tracking_uri", "sqlite_uri", "sqlite_path", "is_remote",
           "absolute_tracking_uri", "local_store_exists", "prepare_local_store"]
