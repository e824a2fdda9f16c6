"""``manifest.json`` of a built corpus: inputs with sha256, config and its hash, shards, counts.

The manifest is what makes a corpus reproducible and checkable: the same inputs and config give the
same ``config_hash``; ``load_corpus`` finds shards through it; ``recon corpus stats`` reads only it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..atomic import write_text_atomic
from .index import MANIFEST_NAME

MANIFEST_VERSION = 1


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of the config (input hashes included), first 16 hex digits."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def write_manifest(directory: str | Path, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename) so a reader never sees half of it."""
    return write_text_atomic(Path(directory) / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
