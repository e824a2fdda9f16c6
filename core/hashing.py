"""The one home of recon's hashes: canonical-JSON config hashes and file digests.

Trial ids, pre-training stage ids and corpus manifests all hash a config the same way (sorted keys,
compact separators), so a config that prints the same hashes the same everywhere.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

HASH_LENGTH = 16


def canonical_json(payload: Any) -> str:
    """Sorted-key, compact JSON: equal configs give equal text whatever their key order."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(payload: Any, length: int = HASH_LENGTH) -> str:
    """sha256 of :func:`canonical_json` of ``payload``, first ``length`` hex digits."""
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:length]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Full sha256 hex digest of a file, read in chunks (large corpora and checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["canonical_json", "stable_hash", "file_sha256", "HASH_LENGTH"]
