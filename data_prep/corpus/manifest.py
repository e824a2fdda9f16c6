"""``manifest.json`` of a built corpus: inputs with sha256, config and its hash, shards, counts.

The manifest is what makes a corpus reproducible and checkable: the same inputs and config give the
same ``config_hash``; ``load_corpus`` finds shards through it; ``recon corpus stats`` reads only it.

:func:`corpus_identity` is the corpus's CONTENT identity, for pre-training stage ids (never the
corpus path: a corpus rebuilt at the same path with other inputs or exclusions must not reuse a
checkpoint). It combines ``config_hash`` (input sha256s, exclusion datasets and the digests of their
evaluation files, settings, spaCy pipeline) with a digest of every shard's rows, which the builder
writes into the manifest, so computing the identity reads only ``manifest.json``. Shard digests are
ORDER-INDEPENDENT hashes of the rows (sorted per-row hashes), not file digests: Ray Data names its
output files per run and does not promise row order inside them, so two identical builds give
different bytes but the same rows, and the same identity. A manifest written before shard digests
existed gets them computed from the shard files (a full read, once per call).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from recon.core.atomic import write_text_atomic
from recon.core.errors import DataError, DatasetNotFound
from recon.core.hashing import file_sha256, stable_hash
from recon.data_prep.corpus.index import MANIFEST_NAME, read_manifest

MANIFEST_VERSION = 2  # 2: per-shard row digests, exclusion record with file sha256s
IDENTITY_VERSION = 1


def config_hash(config: dict) -> str:
    """The corpus config's :func:`stable_hash` (input hashes included)."""
    return stable_hash(config)


def write_manifest(directory: str | Path, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename) so a reader never sees half of it."""
    return write_text_atomic(Path(directory) / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _rows(path: Path) -> Iterator[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with Ray Data

        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            yield from parquet.read_row_group(group).to_pylist()
        return
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"invalid JSON: {exc.msg}", path=path, line=lineno) from exc


def shard_digest(files: Iterable[str | Path]) -> tuple[int, str]:
    """``(rows, digest)`` of one shard's files: the stable hash of its sorted per-row stable hashes.

    Independent of file names, of how rows are split across files and of row order; the same for
    the JSON-lines and Parquet forms of the same rows.
    """
    hashes = sorted(stable_hash(row) for path in files for row in _rows(Path(path)))
    return len(hashes), stable_hash(hashes)


def _shard_digests(directory: Path, manifest: dict, recompute: bool) -> list[list]:
    out = []
    for shard in sorted(manifest.get("shards", []), key=lambda s: int(s["id"])):
        if recompute or "digest" not in shard or "examples" not in shard:
            paths = [directory / name for name in shard.get("files", [])]
            for path in paths:
                if not path.is_file():
                    raise DatasetNotFound(f"{path} is listed in the manifest but missing")
            rows, digest = shard_digest(paths)
        else:
            rows, digest = int(shard["examples"]), str(shard["digest"])
        out.append([int(shard["id"]), rows, digest])
    return out


def corpus_identity(directory: str | Path, *, verify: bool = False) -> str:
    """Content identity of the built corpus in ``directory`` (see the module docstring).

    Changes whenever the corpus is rebuilt from other inputs, with other exclusions or settings, or
    with other resulting rows; stays the same for an identical rebuild, wherever the corpus lies.
    ``verify=True`` re-reads every shard and raises :class:`DataError` if the rows no longer match
    the digests the manifest records (a corpus edited after its build).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    # a hand-made corpus (test fixtures) may lack config_hash: its rows alone then identify it
    config = manifest.get("config_hash") or (config_hash(manifest["config"]) if "config" in manifest else None)
    shards = _shard_digests(directory, manifest, recompute=False)
    if verify:
        actual = _shard_digests(directory, manifest, recompute=True)
        for recorded, found in zip(shards, actual):
            if recorded != found:
                raise DataError(f"shard {recorded[0]} holds {found[1]} rows with digest {found[2]} but the "
                                f"manifest records {recorded[1]} rows with digest {recorded[2]}: the corpus "
                                "was changed after it was built; rebuild it",
                                path=directory / MANIFEST_NAME, field="shards")
    return stable_hash({"identity_version": IDENTITY_VERSION, "config_hash": config,
                        "format": manifest.get("format"), "num_shards": manifest.get("num_shards"),
                        "shards": shards})


__all__ = ["MANIFEST_VERSION", "config_hash", "corpus_identity", "file_sha256", "shard_digest",
           "write_manifest"]
