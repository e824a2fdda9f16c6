"""The knowledge graph as data: hash-partitioned Parquet tables in a storage location (``recon kg build``).

    recon kg build --wikidata-dump latest-all.json.bz2 --out s3://bucket/kg      # or a local path
    recon kg build --triples kg.tsv --aliases aliases.tsv --out kg/ --relations all

Tables (``<out>/<table>/part-NNNNN.parquet``, ``parts`` files each; a row lives in part
``crc32(key) % parts``, so a join reads only the parts its keys hash to):

=============  ===============================  ===============================================
table          columns                          key (partitioning)
=============  ===============================  ===============================================
statements     head, relation, tail             the UNORDERED pair (``index.pair_shard``)
aliases        alias, entity                    alias (normalised as the linker does)
names          entity, name                     entity (its display name: first label/alias)
sitelinks      title, entity                    title (``kg.normalise_title``), site ``enwiki``
=============  ===============================  ===============================================

``parts`` follows the data: ``ceil(rows / rows_per_part)``, so one part (what one join task holds)
stays the same size however large the graph grows. ``manifest.json`` (written last: its presence
means the tables are complete) records the inputs with their sha256, the settings, every table's
parts and row counts, the counts of the parse and the located errors.

Reading them is this module (manifests, parts, identity, the in-memory graph of small sets); building
them is ``recon.data_prep.corpus.kg_build``. How it runs: the driver streams each input ONCE (decompressing ``.gz``/``.bz2``; hashing the stored
bytes on the way) and cuts it into chunks of ``chunk_lines`` lines, shipped to Ray tasks that parse
them in parallel (``wikidata.parse_dump_line``; the triples and alias-table line formats of
``kg``) into staging files under ``<out>/_staging/``, each chunk marked done when written; a build
stopped half-way and started again with the same inputs and settings skips the chunks marked done
(resumable per part). Then one Ray Data shuffle per table (``groupby(bucket).map_groups``) writes
each final part, de-duplicated and sorted. A bad line is a :class:`DataError` with file and line;
``on_error=raise`` stops the build on it, ``skip`` skips and counts it (the first ones are listed in
the manifest). Ray is imported inside the functions: importing this module stays light.
"""
from __future__ import annotations

import json
import posixpath
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Optional

from recon.core.errors import DataError, DatasetNotFound
from recon.core.hashing import stable_hash
from recon.data_prep.corpus.index import pair_shard
from recon.data_prep.corpus.kg import KnowledgeGraph

KG_MANIFEST = "manifest.json"
KG_FORMAT = "recon-kg"
KG_VERSION = 1
STAGING = "_staging"
MAX_LISTED_ERRORS = 100
TABLES: dict[str, tuple[str, ...]] = {
    "statements": ("head", "relation", "tail"),
    "aliases": ("alias", "entity"),
    "names": ("entity", "name"),
    "sitelinks": ("title", "entity"),
}




# ------------------------------------------------------------------ storage helpers

def _fs(uri: str):
    from recon.core.storage import fs_and_path

    return fs_and_path(uri)


def _join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


def part_name(table: str, part: int) -> str:
    return f"{table}/part-{part:05d}.parquet"


def bucket(key: str, parts: int) -> int:
    """The part of a key (crc32, stable across processes and machines)."""
    return zlib.crc32(key.encode("utf-8")) % max(1, int(parts))


def statement_bucket(head: str, tail: str, parts: int) -> int:
    """The part of a statement: its UNORDERED pair, as ``index.pair_shard`` (and the exclusion pairs)."""
    return pair_shard(head, tail, parts)


def read_kg_manifest(uri: str) -> dict:
    fs, root = _fs(str(uri))
    path = _join(root, KG_MANIFEST)
    try:
        with fs.open_input_stream(path) as handle:
            manifest = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise DatasetNotFound(f"{uri} holds no knowledge-graph tables ({KG_MANIFEST} is missing; build them "
                              "with `recon kg build`)") from None
    if manifest.get("format") != KG_FORMAT:
        raise DataError(f"not a {KG_FORMAT} manifest", path=f"{uri}/{KG_MANIFEST}", field="format")
    return manifest


def read_part(uri: str, table: str, part: int, columns=None):
    """One part of a table as a ``pyarrow.Table`` (what a join task holds)."""
    import pyarrow.parquet as pq

    fs, root = _fs(str(uri))
    return pq.read_table(_join(root, part_name(table, part)), filesystem=fs, columns=columns)


def read_table(uri: str, table: str) -> Iterator[dict]:
    """Every row of a table, part by part (small graphs: ``KnowledgeGraph.from_tables``)."""
    manifest = read_kg_manifest(uri)
    for part in range(int(manifest["tables"][table]["parts"])):
        yield from read_part(uri, table, part).to_pylist()


def kg_identity(manifest: dict) -> str:
    """Content identity of a table set: its inputs' sha256s and the settings that decide the rows."""
    return stable_hash({"version": manifest["version"], "settings": manifest["settings"],
                        "inputs": {k: v["sha256"] for k, v in manifest["inputs"].items()}})


# ------------------------------------------------------------------ relation set

def relation_set(spec: str, data_dir: Optional[str] = None) -> Optional[list[str]]:
    """The PIDs to keep: ``None`` for all; ``fewrel``: the keys of fewrel/pid2name.json (the paper's set)."""
    if spec == "all":
        return None
    if spec == "fewrel":
        from recon.data_prep.datadir import resolve_dataset_dir

        path = resolve_dataset_dir("fewrel", "fewrel", data_dir) / "pid2name.json"
    else:
        path = Path(spec)
    if not path.is_file():
        raise DatasetNotFound(f"relation set {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            return sorted(json.loads(text))
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    return sorted({line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")})


def graph_from_tables(uri: str | Path) -> KnowledgeGraph:
    """The whole graph of tables written by ``recon kg build``, in memory (small graphs only)."""
    relations: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in read_table(str(uri), "statements"):
        relations[(row["head"], row["tail"])].add(row["relation"])
    alias_index: dict[str, set[str]] = defaultdict(set)
    for row in read_table(str(uri), "aliases"):
        alias_index[row["alias"]].add(row["entity"])
    names = {row["entity"]: row["name"] for row in read_table(str(uri), "names")}
    sitelinks = {row["title"]: row["entity"] for row in read_table(str(uri), "sitelinks")}
    return KnowledgeGraph({k: tuple(sorted(v)) for k, v in relations.items()},
                          {k: tuple(sorted(v)) for k, v in alias_index.items()}, names, sitelinks)


def format_kg_report(manifest: dict) -> str:
    c, t, e = manifest["counts"], manifest["tables"], manifest["errors"]
    rel = manifest["settings"]["relations"]
    lines = [
        f"kg {manifest['kg_hash']}: {c.get('entities', 0)} entities read, {c['statements']} statements "
        f"({'all relations' if rel is None else f'{len(rel)} relations'}; {c.get('statements_other_relations', 0)} "
        f"of other relations dropped), {c['aliases']} aliases, {c['entities_named']} named entities, "
        f"{c['sitelinks']} sitelinks",
        "parts: " + ", ".join(f"{name} {info['parts']} ({info['rows']} rows)" for name, info in t.items()),
        f"bad lines: {e['count']} ({e['on_error']})",
    ]
    for err in e["first"][:10]:
        lines.append(f"  {err['path']}, line {err['line']}" + (f", field '{err['field']}'" if err["field"] else "")
                     + f": {err['message']}")
    return "\n".join(lines)



__all__ = ["TABLES", "KG_MANIFEST", "bucket", "statement_bucket", "format_kg_report", "kg_identity", "read_kg_manifest",
           "read_part", "read_table", "relation_set", "graph_from_tables", "part_name"]
