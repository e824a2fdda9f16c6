"""Where benchmark files live: ``--data-dir``, else ``$RECON_DATA_DIR``, else ``../shared/datasets``,
else the directory ``recon data fetch`` downloads into by default (``~/.cache/recon/datasets``).

The fallback is tried relative to the current directory and to the repository root (the directory
holding ``pyproject.toml``), so commands work from a checkout without any configuration. A dataset
that is in none of these places raises :class:`DatasetNotFound` listing every place looked at.
"""
from __future__ import annotations

import os
from pathlib import Path

from recon.core.errors import DatasetNotFound
from recon.data_prep.spacy_pipeline import cache_dir

ENV_VAR = "RECON_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
FALLBACK = Path("..") / "shared" / "datasets"


def fetch_default_dir() -> Path:
    """Where ``recon data fetch`` puts files when no directory is configured."""
    return cache_dir().expanduser() / "datasets"


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """``(directory, why)`` in the order they are tried; an explicit choice excludes the fallbacks."""
    if data_dir:
        return [(Path(data_dir).expanduser(), "--data-dir")]
    if os.environ.get(ENV_VAR):
        return [(Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}")]
    found = [((Path.cwd() / FALLBACK).resolve(), "default, relative to the current directory"),
             ((REPO_ROOT / FALLBACK).resolve(), "default, relative to the repository"),
             (fetch_default_dir(), "default download directory of `recon data fetch`")]
    unique, seen = [], set()
    for path, why in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, why))
    return unique


def fetch_target_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where ``recon data fetch`` (and a study fetching what it lacks) writes: the first candidate folder that
    exists (``--data-dir``, ``$RECON_DATA_DIR``, ``../shared/datasets``), else the per-user download folder,
    which the loaders also search."""
    candidates = candidate_dirs(explicit)
    if explicit or len(candidates) == 1:
        return candidates[0][0]
    for path, _why in candidates:
        if path.is_dir():
            return path
    return fetch_default_dir()


def existing_data_root(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first candidate directory that exists, absolute; ``None`` when there is none."""
    for path, _why in candidate_dirs(data_dir):
        if path.is_dir():
            return path.resolve()
    return None


def how_to_get(name: str) -> str:
    if name == "tacred":
        return ("TACRED is licensed by the LDC (LDC2018T24) and cannot be downloaded by recon: point "
                "--data-dir at a directory holding tacred/train.json, dev.json and test.json, or use "
                "--path DIR --kind tacred on your copy.")
    return (f"Get it with `recon data fetch {name}`, set --data-dir or ${ENV_VAR}, or use --path DIR --kind KIND "
            "for files elsewhere.")


def resolve_dataset_dir(name: str, subdir: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The first candidate directory holding ``subdir`` (the dataset's folder)."""
    looked = []
    for base, why in candidate_dirs(data_dir):
        path = base / subdir
        if path.is_dir():
            return path
        looked.append(f"{path} ({why})")
    raise DatasetNotFound(f"dataset {name!r} not found; looked in: {'; '.join(looked)}. {how_to_get(name)}")
