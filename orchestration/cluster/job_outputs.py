"""Where a submitted job keeps what must outlive it: its MLflow store, tables, plots and run folders.

A Ray Job runs in Ray's temporary copy of the uploaded project
(``<ray temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>/``), on the head node. Ray
deletes that copy with the session, and the user who submitted the job cannot see it anyway. Anything a
study, sweep or pre-training run writes under its default output folder (``runs/<name>``, relative to
that copy) would be lost, and the ``browse:`` line it printed would name a store nobody can open.

The rule, in one place (this module), used by ``recon study``, ``recon sweep`` and ``recon pretrain``:

* A process is a submitted job when ``recon submit`` said so (:data:`SUBMITTED_ENV` in the job's
  environment) or, defensively, when it runs inside Ray's ``runtime_resources/working_dir_files``.
* Its output folder (tables, summary, the default ``mlflow.db``) is the one the user named when that
  is outside the job's working directory (an NFS path in ``output_dir``); else
  ``<storage>/<studies|sweeps|pretrain>/<name>`` when the storage (``--storage`` / ``$RECON_STORAGE``)
  is a path (local or NFS): MLflow and ``recon ui`` open the SQLite store there from any machine that
  sees the storage.
* What cannot be moved there is refused by preflight, with the flag to add: storage inside the job's
  working directory (or none given), and an SQLite store inside it (object storage cannot hold SQLite:
  a job with ``s3://`` storage needs ``--tracking-uri`` of an MLflow server).
* With object storage and a tracking server the runs live on the server; the tables and plots are
  written in the job's folder and then copied to ``<storage>/<kind folder>/<name>/summary``
  (:func:`keep_summary`), which is the path printed.

``recon submit`` prints nothing about outputs (it cannot know them before the job resolves its spec);
the job prints its ``tables and plots:`` and ``browse:`` lines, and ``recon jobs status|logs`` repeat
them from the job's log once it has ended (:func:`closing_lines`).
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Optional, Sequence

from recon.core.preflight import Problem
from recon.core.storage import Storage, is_uri
from recon.orchestration.tracking.uri import sqlite_path

#: Set by ``recon submit`` in a Ray Job's environment (value: the launcher).
SUBMITTED_ENV = "RECON_SUBMITTED"
SUBMITTED_RAY_JOB = "ray-job"
#: The folders of Ray's unpacked ``working_dir`` packages: ``.../runtime_resources/working_dir_files/_ray_pkg_*``.
RAY_WORKING_DIR_PARTS = ("runtime_resources", "working_dir_files")
#: Folder under the storage per kind of run.
KIND_FOLDERS = {"study": "studies", "sweep": "sweeps", "pretrain": "pretrain"}
KIND_LABELS = {"study": "study", "sweep": "sweep", "pretrain": "pre-training run"}
#: Prefixes of the lines a run prints about its outputs; ``recon jobs`` repeats them when the job has ended.
CLOSING_PREFIXES = ("tables and plots:", "artifacts (trials table", "final checkpoint:", "browse:")
STORAGE_FIX = ("give `recon submit --storage` a folder every node and your own machine reach (an NFS path), "
               "or an s3:// / gs:// URI together with `--tracking-uri` of an MLflow server")


def job_working_dir(cwd: Optional[Path] = None) -> Optional[Path]:
    """The temporary folder this process runs in as a submitted job, None when it is not one.

    Inside Ray's ``working_dir_files`` it is the unpacked package (``_ray_pkg_*``); in a job
    ``recon submit`` started without an upload (``--no-working-dir``) it is the current folder, which is
    no more the user's than the package is.
    """
    here = (cwd or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 1):
        if parts[i:i + 2] == RAY_WORKING_DIR_PARTS:
            return Path(*parts[:i + 3])
    return here if os.environ.get(SUBMITTED_ENV) else None


def inside(path: Path | str, folder: Optional[Path]) -> bool:
    """``path`` is ``folder`` or below it (both resolved)."""
    if folder is None:
        return False
    return Path(path).expanduser().resolve().is_relative_to(folder.resolve())


def local_root(storage_uri: str) -> Optional[Path]:
    """The folder of a storage location on this machine's filesystem (a path or ``file://``), else None."""
    if not is_uri(storage_uri):
        return Path(storage_uri).expanduser().resolve()
    if not storage_uri.startswith("file:"):  # object stores: no filesystem to resolve (nor network to ask)
        return None
    storage = Storage.from_uri(storage_uri)
    return Path(storage.root) if storage.filesystem.type_name == "local" else None


def job_home(kind: str, name: str, storage_uri: str) -> str:
    """``<storage>/<kind folder>/<name>``: where a submitted run's outputs outlive the job (a path or a URI)."""
    root = local_root(storage_uri)
    if root is not None:
        return str(root / KIND_FOLDERS[kind] / name)
    return _under(storage_uri, KIND_FOLDERS[kind], name)


def _under(uri: str, *parts: str) -> str:
    """``uri/parts``, by text: resolving an object store's filesystem would ask the network for its region."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts if p)])


def job_output_dir(kind: str, name: str, output_dir: Path, storage_uri: Optional[str]) -> Optional[Path]:
    """The output folder a submitted run must use instead of ``output_dir``; None to keep ``output_dir``.

    None outside a submitted job, when ``output_dir`` is already outside the job's folder, and when the
    storage is not a path outside it (object storage, none): :func:`job_output_problems` decides those.
    """
    job_dir = job_working_dir()
    if job_dir is None or not inside(output_dir, job_dir) or not storage_uri:
        return None
    root = local_root(storage_uri)
    if root is None or inside(root, job_dir):
        return None
    return Path(job_home(kind, name, storage_uri))


def job_pretrain_place(out: str, tracking_uri: Optional[str], storage_uri: Optional[str]) -> tuple[str, Optional[str]]:
    """``--out`` and ``--tracking-uri`` for a pre-training run: in a submitted job whose ``--out`` lies in the
    job's folder, ``<storage>/pretrain`` (a path or a URI: the run's folder takes either), and, when no store is
    named and the storage is a path, the SQLite store ``<storage>/pretrain/mlflow.db`` beside it."""
    job_dir = job_working_dir()
    if job_dir is None or not storage_uri or is_uri(out) or not inside(out, job_dir):
        return out, tracking_uri
    root = local_root(storage_uri)
    if root is not None and inside(root, job_dir):
        return out, tracking_uri
    folder = KIND_FOLDERS["pretrain"]
    home = str(root / folder) if root is not None else _under(storage_uri, folder)
    if tracking_uri is None and root is not None:
        from recon.orchestration.tracking.uri import DEFAULT_DB_NAME, sqlite_uri

        tracking_uri = sqlite_uri(Path(home) / DEFAULT_DB_NAME)
    return home, tracking_uri


def job_output_problems(kind: str, storage_uri: str, tracking_uri: str) -> list[Problem]:
    """What a submitted run (``kind``: study, sweep, pretrain) would leave in the job's temporary folder that
    cannot be moved out of it."""
    job_dir = job_working_dir()
    if job_dir is None:
        return []
    gone = (f"inside the job's working directory {job_dir}, Ray's temporary copy of the project that is deleted "
            f"with the cluster's session and that the submitting machine cannot open")
    problems = []
    root = local_root(storage_uri)
    if root is not None and inside(root, job_dir):
        problems.append(Problem(f"a submitted {KIND_LABELS[kind]}'s storage location {root} is {gone}", STORAGE_FIX))
    db = sqlite_path(tracking_uri)
    if db is not None and inside(db, job_dir):
        why = (f"an SQLite store cannot live on object storage such as {storage_uri}" if root is None
               else "and no storage outside it was given")
        problems.append(Problem(
            f"a submitted {KIND_LABELS[kind]}'s MLflow store {db} is {gone} ({why})",
            "give `recon submit --tracking-uri http://MLFLOW_HOST:5000` (an MLflow server the nodes and you "
            f"reach), or `--storage` a shared path: the store then goes under <storage>/{KIND_FOLDERS[kind]}/"))
    return problems


def keep_summary(kind: str, name: str, summary_dir: Path, storage_uri: str) -> str:
    """Where the tables and plots in ``summary_dir`` outlive the job: copied to the storage when they were
    written in the job's temporary folder (object storage); ``summary_dir`` itself otherwise."""
    if not inside(summary_dir, job_working_dir()) or not Path(summary_dir).is_dir():
        return str(summary_dir)
    root = local_root(storage_uri)
    if root is not None and inside(root, job_working_dir()):
        return str(summary_dir)  # refused by preflight before any trial; nothing better to name
    target = f"{KIND_FOLDERS[kind]}/{name}/{Path(summary_dir).name}"
    Storage.from_uri(storage_uri).upload_dir(summary_dir, target)
    return job_home(kind, name, storage_uri) + "/" + Path(summary_dir).name


def browse_command(tracking_uri: str, file: Optional[str] = None, *, submitted: Optional[bool] = None) -> str:
    """How the user opens the runs: ``recon ui FILE`` on the machine that ran the study, and for a submitted
    job (or a store named explicitly) ``recon ui --tracking-uri URI``, a store every machine names the same."""
    if submitted is None:
        submitted = job_working_dir() is not None
    if submitted or file is None:
        return f"recon ui --tracking-uri {shlex.quote(tracking_uri)}"
    return f"recon ui {shlex.quote(file)}"


def closing_lines(log_text: str) -> list[str]:
    """The lines of a job's log that say where its outputs are (the last of each kind), in log order."""
    last: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(log_text.splitlines()):
        text = line.strip()
        for prefix in CLOSING_PREFIXES:
            if text.startswith(prefix):
                last[prefix] = (number, text)
    return [text for _, text in sorted(last.values())]


def repeat_closing_lines(log_text: str, say=print) -> Sequence[str]:
    """Print :func:`closing_lines` under a heading (``recon jobs`` once the job has ended)."""
    lines = closing_lines(log_text)
    if lines:
        say("where the job's outputs are:")
        for line in lines:
            say(f"  {line}")
    return lines


__all__ = ["SUBMITTED_ENV", "SUBMITTED_RAY_JOB", "KIND_FOLDERS", "job_working_dir", "inside", "local_root",
           "job_home", "job_output_dir", "job_pretrain_place", "job_output_problems", "keep_summary", "browse_command",
           "closing_lines", "repeat_closing_lines"]
