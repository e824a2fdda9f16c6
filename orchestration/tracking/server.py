"""An MLflow tracking server's command line: the one place that knows which options recon starts it with.

Both ``recon ui`` (one user, this machine) and the launchers (a server on a cluster's head node that every
job reaches: the Slurm script, ``cluster.yaml``) start ``mlflow server`` / ``mlflow ui`` with:

* ``--backend-store-uri``: the runs. A study's SQLite file, or a database URI. An SQLite store gets
  ``--workers 1``: one server process is then its only writer, so "database is locked" cannot happen.
* ``--artifacts-destination``: where the server keeps artifacts (a shared path, ``s3://``, ``gs://``);
  runs logged through a server record ``mlflow-artifacts:/...`` URIs, which any later server started with
  the same destination serves again (how a store is browsed after the cluster's server has stopped).
* ``--allowed-hosts``: MLflow 3 refuses requests whose ``Host`` header it does not know; the address the
  server binds to and the usual tunnel ends (``localhost`` / ``127.0.0.1`` on the same port).

Nothing here starts a process or imports MLflow.
"""
from __future__ import annotations

from typing import Optional
from urllib.parse import urlsplit

from recon.orchestration.tracking.uri import sqlite_path

#: What ``mlflow server`` answers on when it is up (``OK``).
HEALTH_PATH = "/health"


def store_options(backend_store: str, artifacts_destination: Optional[str] = None) -> list[str]:
    """``--backend-store-uri`` (and ``--workers 1`` for SQLite) plus ``--artifacts-destination`` when given."""
    options = ["--backend-store-uri", backend_store]
    if artifacts_destination:
        options += ["--artifacts-destination", artifacts_destination]
    if sqlite_path(backend_store) is not None:
        options += ["--workers", "1"]
    return options


def allowed_hosts(host: str, port: int | str) -> str:
    """``--allowed-hosts`` for a server bound to ``host:port``: that address and the tunnel ends on the port."""
    names = [host, "localhost", "127.0.0.1"]
    seen: list[str] = []
    for name in names:
        if name not in seen and name not in ("0.0.0.0", "::", ""):
            seen.append(name)
    return ",".join(f"{name}:{port}" for name in seen)


def has_password(uri: str) -> bool:
    """A URI that carries a password (``scheme://user:secret@host/...``): never written into a script."""
    try:
        return urlsplit(uri).password is not None
    except ValueError:
        return False


__all__ = ["HEALTH_PATH", "store_options", "allowed_hosts", "has_password"]
