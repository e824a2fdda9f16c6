"""Datasets for trials on any node: the driver publishes the files a study reads, each node caches them.

The driver resolves its data directory once, publishes every file of the datasets its trials read
(content-addressed by sha256, so a second study or a resumed one uploads nothing) and hands the
trials a manifest. A trial rebuilds a data directory from its node's cache (each file fetched once
per node and verified), so a worker node that sees nothing of the driver's disk reads exactly the
files the driver validated. Datasets are small (the shared ones are a few MB each).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from recon.core.errors import ReconError
from recon.core.hashing import stable_hash

from recon.core.storage import Storage, default_cache_dir
from recon.core.node_cache import fetch_cached, publish_files

NAMESPACE = "datasets"
# Few-shot trials train on Wiki80 relations and map them to FewRel ids (pid2name.json).
FEWSHOT_NEEDS = ("wiki80", "fewrel")


def dataset_files(names: Iterable[str], data_root: Optional[str]) -> dict[str, Path]:
    """``<folder>/<file>`` -> path for every regular file of the named datasets found under ``data_root``."""
    from recon.data_prep.registry import get_spec

    files: dict[str, Path] = {}
    if not data_root:
        return files
    for name in sorted(set(names)):
        folder = Path(data_root) / get_spec(name).directory
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                files[f"{get_spec(name).directory}/{path.name}"] = path
    return files


def publish_study_data(names: Iterable[str], data_root: Optional[str], storage: Storage) -> dict:
    """Publish the datasets' files; returns the manifest trials rebuild their data directory from."""
    files = dataset_files(names, data_root)
    flat = {rel.replace("/", "__"): path for rel, path in files.items()}
    published = publish_files(storage, flat, NAMESPACE)
    return {rel: published[rel.replace("/", "__")] for rel in files}


def publish_local_models(configs: Iterable[dict], storage: Storage) -> dict[str, dict]:
    """Encoders or checkpoints that trials name by a directory on the driver, published for every node.

    A model given as ``encoder: /path/to/dir`` (or a checkpoint directory) exists on the driver's
    disk only; it is published content-addressed, and trials fetch it by the same name.
    """
    from recon.core.node_cache import publish_dir

    out: dict[str, dict] = {}
    for config in configs:
        for key in ("model", "encoder"):
            value = config.get(key)
            if isinstance(value, str) and value not in out and Path(value).expanduser().is_dir():
                uri, digest = publish_dir(storage, Path(value).expanduser(), "inputs/models")
                out[value] = {"uri": uri, "digest": digest}
    return out


def materialize(manifest: dict, cache_dir: Optional[Path] = None) -> Optional[str]:
    """A local data directory holding the manifest's files (links into this node's verified cache).

    The directory is named by the manifest's hash and built in a temporary sibling, then renamed:
    concurrent trials on one node either build it or find it complete.
    """
    if not manifest:
        return None
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / "data" / stable_hash(manifest)
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        for rel, entry in manifest.items():
            cached = fetch_cached(entry, entry["sha256"], cache)
            link = staging / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(cached, link)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # pragma: no cover - a rename failing for another reason
                raise ReconError(f"could not build the data directory {target}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


__all__ = ["publish_study_data", "publish_local_models", "materialize", "dataset_files", "FEWSHOT_NEEDS"]
