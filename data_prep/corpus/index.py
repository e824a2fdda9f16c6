"""The built corpus as an in-memory index: relation bags and entity-pair groups for the samplers.

A built corpus directory holds ``manifest.json`` and shard directories ``shard-00000/ ...`` of
JSON-lines (``*.json``) or Parquet (``*.parquet``) files. Every row is one example, with flat
columns so that both formats and pandas read them without custom code::

    uid, sentence_id, tokens (list of str), relation,
    head_id, head_name, head_start, head_end, head_source,
    tail_id, tail_name, tail_start, tail_end, tail_source, shard

Spans are token spans ``[start, end)``; ``*_source`` is ``anchor`` or ``ner_alias``. The shard of
an example is ``pair_shard(head_id, tail_id, num_shards)``, a stable hash of the UNORDERED entity
pair, so every sentence of one entity pair (MTB positives) lives in one shard, and a worker that
reads only its shards sees the same examples as a sampler that partitions the global index.

One sentence yields several rows (one per ordered pair of linked mentions and KG relation), and the
same text can also occur on several source lines. ``CorpusIndex.text_ids`` gives every row a dense
id of its token sequence, so the samplers can tell "another row" from "another sentence".
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from recon.core.errors import DataError, DatasetNotFound, read_json_object
from recon.data_prep.example import Entity, RelationExample

MANIFEST_NAME = "manifest.json"
COLUMNS: tuple[str, ...] = (
    "uid", "sentence_id", "tokens", "relation",
    "head_id", "head_name", "head_start", "head_end", "head_source",
    "tail_id", "tail_name", "tail_start", "tail_end", "tail_source", "shard",
)


def pair_key(a: str, b: str) -> tuple[str, str]:
    """Unordered entity pair, used for sharding and for test-set exclusion."""
    return (a, b) if a <= b else (b, a)


def pair_shard(head_id: str, tail_id: str, num_shards: int) -> int:
    """Stable shard of an entity pair (crc32, not Python's salted ``hash``)."""
    lo, hi = pair_key(head_id, tail_id)
    return zlib.crc32(f"{lo}\t{hi}".encode("utf-8")) % max(1, int(num_shards))


def shard_dir_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}"


def shards_for_rank(num_shards: int, rank: int, world_size: int) -> list[int]:
    """Shards worker ``rank`` of ``world_size`` owns: ``shard % world_size == rank``.

    The samplers partition by the same rule, so ``load_corpus(dir, shard_ids=shards_for_rank(...))``
    and a sampler over the global index with the same rank draw from the same examples.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if world_size > num_shards:
        raise DataError(
            f"the corpus has {num_shards} shards but {world_size} workers; rebuild it with "
            f"--shards {world_size} or more so that every worker owns at least one shard"
        )
    return [s for s in range(num_shards) if s % world_size == rank]


@dataclass(frozen=True)
class Mention:
    """A linked mention: token span ``[start, end)``, entity id, surface name and linking source."""

    id: str
    name: str
    start: int
    end: int
    source: str


@dataclass(frozen=True)
class CorpusExample:
    """One corpus row: a sentence, a linked (head, tail) pair and the KG relation between them."""

    uid: str
    sentence_id: str
    tokens: tuple[str, ...]
    relation: str
    head: Mention
    tail: Mention
    shard: int = 0

    @property
    def pair(self) -> tuple[str, str]:
        return (self.head.id, self.tail.id)

    def to_row(self) -> dict:
        row = {"uid": self.uid, "sentence_id": self.sentence_id, "tokens": list(self.tokens),
               "relation": self.relation, "shard": int(self.shard)}
        for role, m in (("head", self.head), ("tail", self.tail)):
            row.update({f"{role}_id": m.id, f"{role}_name": m.name, f"{role}_start": int(m.start),
                        f"{role}_end": int(m.end), f"{role}_source": m.source})
        return row

    @classmethod
    def from_row(cls, row: dict, *, path: str | None = None, line: int | None = None) -> "CorpusExample":
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise DataError("corpus row lacks a column", path=path, line=line, field=missing[0])
        mentions = {}
        if not isinstance(row["tokens"], list):
            raise DataError("expected a list of tokens", path=path, line=line, field="tokens")
        for role in ("head", "tail"):
            start, end = row[f"{role}_start"], row[f"{role}_end"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
                raise DataError(f"span bounds must be integers, got [{start!r:.20}, {end!r:.20}]",
                                path=path, line=line, field=f"{role}_start")
            if not 0 <= start < end <= len(row["tokens"]):
                raise DataError(f"span [{start}, {end}) is outside the {len(row['tokens'])} tokens",
                                path=path, line=line, field=f"{role}_start")
            mentions[role] = Mention(str(row[f"{role}_id"]), str(row[f"{role}_name"]), start, end,
                                     str(row[f"{role}_source"]))
        return cls(str(row["uid"]), str(row["sentence_id"]), tuple(str(t) for t in row["tokens"]),
                   str(row["relation"]), mentions["head"], mentions["tail"], int(row["shard"]))

    def to_relation_example(self) -> RelationExample:
        """The shared example type, so ``recon.data_prep.formats.render`` can draw it (with blanking)."""
        head = Entity(self.head.start, self.head.end, name=self.head.name, kb_id=self.head.id)
        tail = Entity(self.tail.start, self.tail.end, name=self.tail.name, kb_id=self.tail.id)
        return RelationExample(self.tokens, head, tail, self.relation, source=self.sentence_id,
                               meta={"uid": self.uid, "head_source": self.head.source,
                                     "tail_source": self.tail.source})


def _group(keys: Iterable) -> dict:
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}


@dataclass
class CorpusIndex:
    """Examples grouped by relation (CP bags), by ordered entity pair and by entity (MTB).

    Indices in ``bags``/``pairs``/``by_entity`` point into ``examples``; arrays are sorted.
    ``text_ids[i]`` is the sentence of row ``i``: a dense int (0 .. ``num_texts`` - 1, in order of
    first appearance) of its token sequence. Rows with equal tokens are one sentence whatever their
    ``sentence_id``, entity pair or relation; ids are per index (a load of other shards numbers
    them afresh), so compare them only within one index.
    """

    examples: list[CorpusExample]
    num_shards: int = 1
    shard_ids: tuple[int, ...] = ()
    manifest: dict | None = None
    bags: dict[str, np.ndarray] = field(init=False)
    pairs: dict[tuple[str, str], np.ndarray] = field(init=False)
    by_entity: dict[str, np.ndarray] = field(init=False)
    text_ids: np.ndarray = field(init=False, repr=False)
    num_texts: int = field(init=False)

    def __post_init__(self) -> None:
        self.bags = _group(ex.relation for ex in self.examples)
        self.pairs = _group(ex.pair for ex in self.examples)
        by_entity: dict[str, list[int]] = {}
        for i, ex in enumerate(self.examples):
            by_entity.setdefault(ex.head.id, []).append(i)
            if ex.tail.id != ex.head.id:
                by_entity.setdefault(ex.tail.id, []).append(i)
        self.by_entity = {k: np.asarray(v, dtype=np.int64) for k, v in by_entity.items()}
        texts: dict[tuple[str, ...], int] = {}
        self.text_ids = np.fromiter((texts.setdefault(tuple(ex.tokens), len(texts)) for ex in self.examples),
                                    dtype=np.int64, count=len(self.examples))
        self.num_texts = len(texts)
        if not self.shard_ids:
            self.shard_ids = tuple(sorted({ex.shard for ex in self.examples}))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> CorpusExample:
        return self.examples[int(i)]

    @property
    def relations(self) -> tuple[str, ...]:
        return tuple(sorted(self.bags))

    @property
    def shard_array(self) -> np.ndarray:
        return np.fromiter((ex.shard for ex in self.examples), dtype=np.int64, count=len(self.examples))

    @classmethod
    def from_examples(cls, examples: Sequence[CorpusExample], num_shards: int | None = None) -> "CorpusIndex":
        """Index in-memory examples; with ``num_shards`` their shard is recomputed from the pair."""
        examples = list(examples)
        if num_shards is not None:
            examples = [CorpusExample(e.uid, e.sentence_id, e.tokens, e.relation, e.head, e.tail,
                                      pair_shard(e.head.id, e.tail.id, num_shards)) for e in examples]
        shards = num_shards or (max((e.shard for e in examples), default=0) + 1)
        return cls(examples, num_shards=shards)


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise DatasetNotFound(f"{directory} is not a built corpus: {MANIFEST_NAME} is missing "
                              f"(build one with `recon corpus build`)")
    manifest = read_json_object(path, "the manifest")
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(manifest, path: Path) -> None:
    """The manifest's shape: ``shards`` (when present) list ``{id, files}`` entries whose files are relative
    paths inside the corpus directory."""
    shards = manifest.get("shards", [])
    if not isinstance(shards, list):
        raise DataError("expected a list of shards", path=path, field="shards")
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or "id" not in shard or not isinstance(shard.get("files"), list):
            raise DataError("expected {\"id\": int, \"files\": [...]}", path=path, field=f"shards[{i}]")
        try:
            int(shard["id"])
        except (TypeError, ValueError):
            raise DataError(f"shard id {shard['id']!r} is not an integer", path=path,
                            field=f"shards[{i}].id") from None
        for name in shard["files"]:
            parts = Path(str(name)).parts
            if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in parts:
                raise DataError(f"shard file {name!r} is not a relative path inside the corpus directory",
                                path=path, field=f"shards[{i}].files")
        for key in ("examples", "rows"):
            if key in shard and (not isinstance(shard[key], int) or isinstance(shard[key], bool) or shard[key] < 0):
                raise DataError(f"expected a row count, got {shard[key]!r}", path=path, field=f"shards[{i}].{key}")


def _read_shard_file(path: Path) -> list[CorpusExample]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with Ray Data and pandas

        rows = pq.read_table(path).to_pylist()
        return [_row_or_error(r, path, i) for i, r in enumerate(rows)]
    out = []
    with path.open(encoding="utf-8", errors="surrogateescape") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if any("\udc80" <= c <= "\udcff" for c in line):
                raise DataError("not UTF-8 text; the shard is damaged", path=path, line=lineno)
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", path=path, line=lineno) from exc
            except RecursionError:
                raise DataError("JSON nested too deeply", path=path, line=lineno) from None
            if not isinstance(row, dict):
                raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, line=lineno)
            out.append(CorpusExample.from_row(row, path=str(path), line=lineno))
    return out


def _row_or_error(row: dict, path: Path, record: int) -> CorpusExample:
    try:
        return CorpusExample.from_row(row, path=str(path))
    except DataError as exc:
        raise DataError(exc.reason, path=path, record=record, field=exc.field) from exc


def load_corpus(directory: str | Path, shard_ids: Iterable[int] | None = None) -> CorpusIndex:
    """Load a corpus built by ``recon corpus build``; ``shard_ids`` restricts it to some shards.

    Each pre-training worker can call ``load_corpus(d, shard_ids=shards_for_rank(n, rank, world))``
    and read only its own files. Examples come back in (shard, file, row) order, so indices are
    stable across loads.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    shards = {int(s["id"]): s for s in manifest.get("shards", [])}
    wanted = sorted(shards) if shard_ids is None else sorted(set(int(s) for s in shard_ids))
    unknown = [s for s in wanted if s not in shards]
    if unknown:
        raise DataError(f"shard {unknown[0]} is not in this corpus (it has shards 0..{len(shards) - 1})",
                        path=directory / MANIFEST_NAME, field="shards")
    examples: list[CorpusExample] = []
    position = {int(s["id"]): i for i, s in enumerate(manifest.get("shards", []))}
    for sid in wanted:
        before = len(examples)
        for name in shards[sid]["files"]:
            path = directory / name
            if not path.is_file():
                raise DatasetNotFound(f"{path} is listed in the manifest but missing")
            examples.extend(_read_shard_file(path))
        found = len(examples) - before
        for key in ("examples", "rows"):  # the builder writes "examples"; hand-made corpora "rows"
            recorded = shards[sid].get(key)
            if recorded is not None and recorded != found:
                raise DataError(f"shard {sid} holds {found} rows but the manifest records {recorded}: the corpus "
                                "was changed after it was built (or its manifest is wrong); rebuild it",
                                path=directory / MANIFEST_NAME, field=f"shards[{position[sid]}].{key}")
    total = (manifest.get("counts") or {}).get("examples") if isinstance(manifest.get("counts"), dict) else None
    if shard_ids is None and isinstance(total, int) and total != len(examples):
        raise DataError(f"the corpus holds {len(examples)} rows but the manifest records {total}; rebuild it",
                        path=directory / MANIFEST_NAME, field="counts.examples")
    return CorpusIndex(examples, num_shards=int(manifest.get("num_shards", len(shards) or 1)),
                       shard_ids=tuple(wanted), manifest=manifest)
