"""Building the knowledge-graph tables (``recon kg build``): stream each input once, parse chunks on Ray
tasks, shuffle once per table into hash-partitioned parts (``recon.data_prep.corpus.kg_tables`` says
what the tables are and reads them)."""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import math
import posixpath
import time
from dataclasses import dataclass
from typing import Iterator, Literal, Optional

from recon.core.config import Config, ConfigError, knob
from recon.core.errors import DataError, DatasetNotFound, ReconError
from recon.data_prep.corpus.kg import normalise_name, normalise_title, parse_alias_line, parse_triple_line

from recon.data_prep.corpus.kg_tables import KG_FORMAT, KG_MANIFEST, KG_VERSION, MAX_LISTED_ERRORS, STAGING, TABLES, _fs, _join, bucket, format_kg_report, kg_identity, part_name, relation_set, statement_bucket

@dataclass
class KGBuildConfig(Config):
    """``recon kg build``: inputs, output location, relation set, languages and how the job runs."""

    wikidata_dump: Optional[str] = knob(None, "Wikidata JSON dump, file or URI (one entity per line; .gz/.bz2 ok)",
                                        identity=False)
    triples: Optional[str] = knob(None, "triples file: head relation tail per line", identity=False)
    aliases: Optional[str] = knob(None, "alias table: id<TAB>name... or JSON lines {id, aliases}", identity=False)
    out: Optional[str] = knob(None, "storage location of the tables (required): a path or URI", identity=False)
    relations: str = knob("fewrel", "statements kept: 'fewrel' (the relations of fewrel/pid2name.json, as the "
                                    "paper), 'all', or a file (pid2name.json-style JSON or one PID per line)")
    languages: tuple[str, ...] = knob(("en",), "languages of the labels and aliases used as names")
    site: str = knob("enwiki", "sitelinks site whose page titles map links to entities")
    data_dir: Optional[str] = knob(None, "root holding fewrel/ (for --relations fewrel)", identity=False)
    rows_per_part: int = knob(500_000, "rows per table part: parts = ceil(rows / this), so a join task's "
                                       "memory stays flat as the graph grows", ge=1, identity=False)
    chunk_lines: int = knob(20_000, "input lines per parse task", ge=1, identity=False)
    on_error: Literal["raise", "skip"] = knob("raise", "bad input lines: stop the build, or skip and count them",
                                              choices=("raise", "skip"))
    overwrite: bool = knob(False, "replace complete tables already at --out", identity=False)
    num_cpus: Optional[int] = knob(None, "CPUs of the local Ray started for the build (default: all)", ge=1,
                                   identity=False)
    address: Optional[str] = knob(None, "Ray cluster to build on (default: $RAY_ADDRESS, else a local Ray); "
                                        "--out must then be storage every node sees", identity=False)

    def check(self) -> None:
        super().check()
        self.languages = tuple(self.languages or ())
        if not self.languages:
            raise ConfigError("languages", "give at least one language")



# ------------------------------------------------------------------ streaming the inputs

class _HashingReader(io.RawIOBase):
    """A raw byte stream that hashes what is read from it (the stored, still compressed bytes)."""

    def __init__(self, stream) -> None:
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.digest.update(data)
        self.size += n
        return n


def stream_chunks(uri: str, chunk_lines: int, hashing: list) -> Iterator[tuple[int, int, bytes]]:
    """``(index, first_line, bytes)`` chunks of a (possibly compressed) file; sha256 appended to ``hashing``."""
    fs, path = _fs(str(uri))
    try:
        raw = fs.open_input_stream(path, compression=None)
    except FileNotFoundError:
        raise DatasetNotFound(f"{uri} does not exist") from None
    reader = _HashingReader(raw)
    buffered = io.BufferedReader(reader, 1 << 20)
    if path.endswith(".gz"):
        lines = gzip.GzipFile(fileobj=buffered)
    elif path.endswith(".bz2"):
        lines = bz2.BZ2File(buffered)
    else:
        lines = buffered
    index, first, lineno, batch = 0, 1, 0, []
    try:
        for lineno, line in enumerate(lines, start=1):
            batch.append(line)
            if len(batch) == chunk_lines:
                yield index, first, b"".join(batch)
                index, first, batch = index + 1, lineno + 1, []
        if batch:
            yield index, first, b"".join(batch)
    finally:
        raw.close()
    hashing.append({"sha256": reader.digest.hexdigest(), "bytes": reader.size, "lines": lineno})


def _error_row(exc: DataError) -> dict:
    return {"path": exc.path, "line": exc.line, "field": exc.field, "message": exc.reason}


def parse_chunk(role: str, payload: bytes, first_line: int, source: str, settings: dict) -> tuple[dict, dict, list]:
    """Rows of every table from one chunk, its counts and its errors (no I/O; the Ray task writes)."""
    from recon.data_prep.corpus.wikidata import parse_dump_line

    rows: dict[str, dict[str, list]] = {t: {c: [] for c in (*cols, "order")} for t, cols in TABLES.items()}
    counts: dict[str, int] = {"lines": 0, "entities": 0, "statements_other_relations": 0}
    errors: list[dict] = []
    relations = set(settings["relations"]) if settings["relations"] is not None else None
    triple_relations = relations if role != "triples" or settings.get("filter_triples", True) else None

    def add_names(entity: str, names, lineno: int) -> None:
        for k, name in enumerate(names):
            key = normalise_name(name)
            if not key:
                continue
            # the first name of an entity in input order (alias table before dump) is its display name
            order = (role == "dump") * 10**15 + lineno * 100_000 + k
            for col, value in (("alias", key), ("entity", entity), ("order", order)):
                rows["aliases"][col].append(value)
            for col, value in (("entity", entity), ("name", name), ("order", order)):
                rows["names"][col].append(value)

    def add_statement(head: str, relation: str, tail: str) -> None:
        for col, value in (("head", head), ("relation", relation), ("tail", tail), ("order", 0)):
            rows["statements"][col].append(value)

    text = payload.decode("utf-8", errors="replace")
    for k, line in enumerate(text.splitlines()):
        lineno = first_line + k
        stripped = line.strip()
        if not stripped or (role != "dump" and stripped.startswith("#")):
            continue
        counts["lines"] += 1
        try:
            if role == "dump":
                entity = parse_dump_line(stripped, path=source, line=lineno, languages=settings["languages"],
                                         relations=relations, site=settings["site"])
                if entity is None:
                    continue
                counts["entities"] += 1
                counts["statements_other_relations"] += entity.dropped_statements
                add_names(entity.id, entity.names, lineno)
                for head, relation, tail in entity.statements:
                    add_statement(head, relation, tail)
                if entity.sitelink:
                    for col, value in (("title", normalise_title(entity.sitelink)), ("entity", entity.id),
                                       ("order", lineno)):
                        rows["sitelinks"][col].append(value)
            elif role == "triples":
                head, relation, tail = parse_triple_line(stripped, path=source, lineno=lineno)
                if triple_relations is not None and relation not in triple_relations:
                    counts["statements_other_relations"] += 1
                    continue
                add_statement(head, relation, tail)
            else:
                entity, names = parse_alias_line(stripped, path=source, lineno=lineno)
                counts["entities"] += 1
                add_names(entity, names, lineno)
        except DataError as exc:
            errors.append(_error_row(exc))
    return rows, counts, errors


def _write_rows(fs, path: str, columns: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs.create_dir(posixpath.dirname(path), recursive=True)
    table = pa.table({c: pa.array(v, type=pa.int64() if c == "order" else pa.string()) for c, v in columns.items()})
    tmp = path + ".tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def _parse_task(role: str, index: int, payload: bytes, first_line: int, source: str, settings: dict,
                out: str) -> dict:
    """Ray task: parse one chunk and write its staging files; the done marker is written last."""
    rows, counts, errors = parse_chunk(role, payload, first_line, source, settings)
    fs, root = _fs(out)
    written = {}
    for table, columns in rows.items():
        n = len(columns["order"])
        if n:
            _write_rows(fs, _join(root, STAGING, table, f"{role}-{index:06d}.parquet"), columns)
        written[table] = n
    marker = {"role": role, "index": index, "rows": written, "counts": counts, "errors": errors[:MAX_LISTED_ERRORS],
              "error_count": len(errors)}
    with fs.open_output_stream(_join(root, STAGING, "done", f"{role}-{index:06d}.json")) as handle:
        handle.write(json.dumps(marker).encode("utf-8"))
    return marker


# ------------------------------------------------------------------ final parts (one shuffle per table)

def _add_bucket(batch, *, table: str, parts: int):
    import pyarrow as pa

    if table == "statements":
        keys = [statement_bucket(h, t, parts) for h, t in
                zip(batch.column("head").to_pylist(), batch.column("tail").to_pylist())]
    else:
        keys = [bucket(k, parts) for k in batch.column(TABLES[table][0]).to_pylist()]
    return batch.append_column("bucket", pa.array(keys, type=pa.int64()))


def _write_part(group, *, table: str, out: str):
    """``map_groups`` function (Ray tasks, no actors): de-duplicate, sort and write one part; its counts."""
    return _WritePart(table, out)(group)


class _WritePart:
    def __init__(self, table: str, out: str) -> None:
        self.table, self.out = table, out

    def __call__(self, group):
        import pyarrow as pa
        import pyarrow.compute as pc

        part = int(group.column("bucket")[0].as_py())
        cols = TABLES[self.table]
        if self.table == "names":  # the display name: the first name of the entity in input order
            group = group.sort_by([("entity", "ascending"), ("order", "ascending")])
            entity = group.column("entity")
            first = pc.not_equal(entity.slice(1), entity.slice(0, len(entity) - 1)) if len(entity) > 1 else None
            mask = pa.concat_arrays([pa.array([True]), first.combine_chunks()]) if first is not None \
                else pa.array([True] * len(entity))
            table = group.filter(mask).select(list(cols))
        elif self.table == "sitelinks":  # a title names one page: the first entity claiming it wins
            group = group.sort_by([("title", "ascending"), ("order", "ascending")])
            title = group.column("title")
            first = pc.not_equal(title.slice(1), title.slice(0, len(title) - 1)) if len(title) > 1 else None
            mask = pa.concat_arrays([pa.array([True]), first.combine_chunks()]) if first is not None \
                else pa.array([True] * len(title))
            table = group.filter(mask).select(list(cols))
        else:
            table = group.select(list(cols)).group_by(list(cols)).aggregate([])
            table = table.sort_by([(c, "ascending") for c in cols])
        fs, root = _fs(self.out)
        _write_rows(fs, _join(root, part_name(self.table, part)), {c: table.column(c).to_pylist() for c in cols})
        distinct = len(table) if self.table in ("names", "sitelinks") else \
            len(table.select([cols[0], cols[-1]] if self.table == "statements" else [cols[0]]).group_by(
                [cols[0], cols[-1]] if self.table == "statements" else [cols[0]]).aggregate([]))
        return pa.table({"part": [part], "rows": [len(table)], "distinct": [distinct]})


def _write_empty_part(out: str, table: str, part: int) -> None:
    fs, root = _fs(out)
    _write_rows(fs, _join(root, part_name(table, part)), {c: [] for c in TABLES[table]})


def _finalise_small(out: str, table: str, files: list[str]) -> dict:
    """A table of one part: one task reads its staging files and writes the part (no shuffle)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, _ = _fs(out)
    group = pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files])
    group = group.append_column("bucket", pa.array([0] * len(group), type=pa.int64()))
    return _WritePart(table, out)(group).to_pylist()[0]


def _finalise_tables(out: str, staged: dict[str, list[str]], rows: dict[str, int], rows_per_part: int) -> dict:
    """Every table's final parts: a Ray task per one-part table, a Ray Data shuffle per larger one."""
    import ray

    parts = {t: max(1, math.ceil(rows[t] / rows_per_part)) for t in TABLES}
    small = ray.remote(num_cpus=1)(_finalise_small)
    refs = {t: small.remote(out, t, staged[t]) for t in TABLES if parts[t] == 1 and staged[t]}
    stats: dict[str, dict[int, dict]] = {t: {} for t in TABLES}
    fs, _ = _fs(out)
    for table in TABLES:
        if parts[table] == 1 or not staged[table]:
            continue
        written = (ray.data.read_parquet(staged[table], filesystem=fs)
                   .map_batches(_add_bucket, fn_kwargs={"table": table, "parts": parts[table]},
                                batch_format="pyarrow")
                   .groupby("bucket", num_partitions=parts[table])
                   .map_groups(_write_part, fn_kwargs={"table": table, "out": out}, batch_format="pyarrow")
                   .take_all())
        stats[table] = {int(r["part"]): r for r in written}
    for table, ref in refs.items():
        stats[table] = {0: ray.get(ref)}
    result = {}
    for table in TABLES:
        for part in range(parts[table]):
            if part not in stats[table]:
                _write_empty_part(out, table, part)
        result[table] = {"parts": parts[table], "rows": int(sum(r["rows"] for r in stats[table].values())),
                         "distinct_keys": int(sum(r["distinct"] for r in stats[table].values())),
                         "columns": list(TABLES[table]), "partitioning": "crc32(key) % parts",
                         "key": "unordered (head, tail)" if table == "statements" else TABLES[table][0]}
    return result


# ------------------------------------------------------------------ the build

def _inputs(config: KGBuildConfig) -> list[tuple[str, str]]:
    roles = [("dump", config.wikidata_dump), ("triples", config.triples), ("aliases", config.aliases)]
    return [(role, str(value)) for role, value in roles if value]


def _stat(uri: str) -> dict:
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise DatasetNotFound(f"{uri} does not exist")
    return {"size": info.size, "mtime": info.mtime_ns}


def _exists(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type != pafs.FileType.NotFound


def build_kg_tables(config: KGBuildConfig, *, log=print, filter_triples: bool = True) -> dict:
    """Build the tables described in the module docstring; return the manifest written to ``out``.

    ``filter_triples=False`` keeps every relation of a triples file (the corpus builder's own
    tables from ``--triples``, which must label exactly what the in-memory graph labels).
    """
    import ray

    config.check()
    inputs = _inputs(config)
    if not inputs:
        raise ReconError("give --wikidata-dump FILE, or --triples FILE and --aliases FILE")
    if not config.out:
        raise ReconError("give --out URI: where the tables go")
    fs, root = _fs(config.out)
    if _exists(fs, _join(root, KG_MANIFEST)):
        if not config.overwrite:
            raise ReconError(f"{config.out} already holds knowledge-graph tables; pass --overwrite to rebuild")
        for table in TABLES:
            if _exists(fs, _join(root, table)):
                fs.delete_dir(_join(root, table))
        fs.delete_file(_join(root, KG_MANIFEST))
    relations = relation_set(config.relations, config.data_dir)
    settings = {"relations": relations, "relations_spec": config.relations if config.relations in ("fewrel", "all")
                else "file", "languages": list(config.languages), "site": config.site,
                "filter_triples": filter_triples, "chunk_lines": config.chunk_lines}
    stats = {role: _stat(uri) for role, uri in inputs}
    state = {"settings": settings, "inputs": {role: {"uri": uri, **stats[role]} for role, uri in inputs}}
    staging = _join(root, STAGING)
    state_path = _join(staging, "state.json")
    resumed = False
    if _exists(fs, state_path):
        with fs.open_input_stream(state_path) as handle:
            resumed = json.loads(handle.read().decode("utf-8")) == state
        if not resumed:
            fs.delete_dir(staging)
    fs.create_dir(_join(staging, "done"), recursive=True)
    if not resumed:
        with fs.open_output_stream(state_path) as handle:
            handle.write(json.dumps(state).encode("utf-8"))

    started = False
    t0 = time.time()
    try:
        if not ray.is_initialized():
            from recon.core.ray_session import ensure_ray

            started = ensure_ray(address=config.address, num_cpus=config.num_cpus)
        _quiet_ray_data()
        task = ray.remote(num_cpus=1, max_retries=2)(_parse_task)
        in_flight_max = max(2, 2 * int(ray.available_resources().get("CPU", 1) or 1))
        markers, skipped_chunks, digests = [], 0, {}
        for role, uri in inputs:
            hashing: list = []
            pending = []
            for index, first, payload in stream_chunks(uri, config.chunk_lines, hashing):
                done_path = _join(staging, "done", f"{role}-{index:06d}.json")
                if resumed and _exists(fs, done_path):
                    with fs.open_input_stream(done_path) as handle:
                        markers.append(json.loads(handle.read().decode("utf-8")))
                    skipped_chunks += 1
                    continue
                pending.append(task.remote(role, index, payload, first, uri, settings, config.out))
                while len(pending) >= in_flight_max:  # back-pressure: the driver holds a few chunks at most
                    ready, pending = ray.wait(pending, num_returns=1)
                    markers.extend(_check(ray.get(ready), config.on_error))
            markers.extend(_check(ray.get(pending), config.on_error))
            digests[role] = {"uri": uri, **hashing[0]}
        staged = {t: sorted(_join(staging, t, f"{m['role']}-{m['index']:06d}.parquet") for m in markers
                            if m["rows"].get(t)) for t in TABLES}
        rows = {t: sum(m["rows"].get(t, 0) for m in markers) for t in TABLES}
        log(f"kg build: parsed {len(markers)} chunks ({skipped_chunks} resumed) in {time.time() - t0:.1f} s")
        tables = _finalise_tables(config.out, staged, rows, config.rows_per_part)
    finally:
        if started:
            ray.shutdown()
    counts: dict[str, int] = {}
    for m in markers:
        for k, v in m["counts"].items():
            counts[k] = counts.get(k, 0) + int(v)
    errors = sorted((e for m in markers for e in m["errors"]), key=lambda e: (str(e["path"]), e["line"] or 0))
    manifest = {
        "format": KG_FORMAT, "version": KG_VERSION, "inputs": digests, "settings": settings,
        "tables": tables, "counts": {**counts, "statements": tables["statements"]["rows"],
                                     "entity_pairs": tables["statements"]["distinct_keys"],
                                     "aliases": tables["aliases"]["distinct_keys"],
                                     "entities_named": tables["names"]["rows"],
                                     "sitelinks": tables["sitelinks"]["rows"]},
        "errors": {"on_error": config.on_error, "count": sum(int(m["error_count"]) for m in markers),
                   "first": errors[:MAX_LISTED_ERRORS]},
        "build": {"chunks": len(markers), "resumed_chunks": skipped_chunks, "rows_per_part": config.rows_per_part,
                  "seconds": round(time.time() - t0, 1)},
    }
    manifest["kg_hash"] = kg_identity(manifest)
    fs.delete_dir(staging)
    with fs.open_output_stream(_join(root, KG_MANIFEST + ".tmp")) as handle:
        handle.write((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    fs.move(_join(root, KG_MANIFEST + ".tmp"), _join(root, KG_MANIFEST))
    log(format_kg_report(manifest))
    return manifest


def _check(markers: list[dict], on_error: str) -> list[dict]:
    if on_error == "raise":
        for marker in markers:
            if marker["error_count"]:
                e = marker["errors"][0]
                raise DataError(e["message"], path=e["path"], line=e["line"], field=e["field"])
    return markers


def _quiet_ray_data() -> None:
    import logging

    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)




__all__ = ["KGBuildConfig", "build_kg_tables"]
