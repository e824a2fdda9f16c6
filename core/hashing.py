"""The one home of recon's hashes: canonical-JSON config hashes and file digests.

Trial ids, pre-training stage ids and corpus manifests all hash a config the same way (sorted keys,
compact separators), so a config that prints the same hashes the same everywhere.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

HASH_LENGTH = 16


def canonical_json(payload: Any) -> str:
    """Sorted-key, compact JSON: equal configs give equal text whatever their key order."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(payload: Any, length: int = HASH_LENGTH) -> str:
    """sha256 of :func:`canonical_json` of ``payload``, first ``length`` hex digits."""
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:length]


CHUNK = 1 << 20
_MEMO: dict[tuple, str] = {}


def files_sha256(paths: "Iterable[str | Path]", chunk: int = CHUNK) -> str:
    """One sha256 over the contents of ``paths``, in the given order, read in chunks (large corpora and
    checkpoints never fill memory): one file's digest, or a cache key that follows several files' data."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path, *, memo: bool = False) -> str:
    """Full sha256 hex digest of a file. ``memo`` keeps it for this process while the file's size and
    mtime are unchanged (the many trials of a study log the same dataset files)."""
    if not memo:
        return files_sha256([path])
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MEMO:
        _MEMO[key] = files_sha256([path])
    return _MEMO[key]


__all__ = ["canonical_json", "stable_hash", "file_sha256", "files_sha256", "HASH_LENGTH"]
