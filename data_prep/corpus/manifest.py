"""``manifest.json`` of a built corpus: inputs with sha256, config and its hash, shards, counts.

The manifest is what makes a corpus reproducible and checkable: the same inputs and config give the
same ``config_hash``; ``load_corpus`` finds shards through it; ``recon corpus stats`` reads only it.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_text_atomic
from ..hashing import file_sha256, stable_hash
from .index import MANIFEST_NAME

MANIFEST_VERSION = 1


def config_hash(config: dict) -> str:
    """The corpus config's :func:`stable_hash` (input hashes included)."""
    return stable_hash(config)


def write_manifest(directory: str | Path, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename) so a reader never sees half of it."""
    return write_text_atomic(Path(directory) / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
