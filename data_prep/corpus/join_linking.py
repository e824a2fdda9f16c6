"""Linking as Ray Data joins against the hash-partitioned KG tables (``kg_tables``): no worker holds the graph.

The stages (each a Ray Data operation; rows travel as small JSON payloads):

A. **mentions** (actor pool, spaCy loaded once per actor): input lines -> sentences ->
   ``linking.extract_mentions`` (tokens, anchor spans, NER candidates): KG-independent.
B. **alias + sitelink join**: every normalised NER surface (and its "the"-less form) and every link
   title becomes a request row keyed ``aliases:<part>`` / ``sitelinks:<part>`` (``crc32(key) % parts``
   of that table); a hash shuffle (``groupby(...).map_groups``) brings each part's requests to one
   task, which reads THAT part only and inner-joins it (all entities of an alias come back, so
   ambiguity is decided as today, in C).
C. **resolve** (co-group A with B by sentence, hash-partitioned on the sentence id):
   ``linking.resolve_mentions`` with the sentence's own slice of the alias table, then the ordered
   entity pairs that can hold a relation.
D. **statement join + exclusion anti-join**: every candidate pair is a request keyed by its
   UNORDERED pair's part of ``statements``; the task holding that part joins it with the part's
   statements and with the same part of the evaluation-pair table (written by the driver,
   partitioned the same way), marking excluded pairs. Entity display names (``names`` table) are
   joined here too when an exclusion has name pairs (benchmarks without ids).
E. **label** (co-group C with D by sentence): ``linking.finish_sentence`` -> examples and counts,
   exactly as the in-memory linker (same functions, the per-sentence slice of the graph instead of
   the whole dict). A sentence with one excluded pair is dropped whole (the anti-join).

Why bucketed joins and not ``Dataset.join``: the graph's tables are partitioned by their join key
once, when ``recon kg build`` writes them, so each build shuffles only the sentence-side requests and
every join task reads just the part its requests hash to; ``Dataset.join`` would hash-shuffle both
inputs, the whole statements and alias tables included, on every build.

Memory per task: one part of one table plus the requests that hash to it, so it stays flat as the
graph grows when the tables' ``parts`` follow their size (``rows_per_part``); the number of
sentence partitions follows the input (``sentences_per_partition``). A stage with one partition
runs as one task over one block (``repartition(1)``) instead of a shuffle: same function, same rows,
less fixed cost on small inputs.
"""
from __future__ import annotations

import json
import math
import zlib
from collections import Counter, defaultdict
from typing import Any, Callable, Optional

from recon.data_prep.corpus.index import Mention, pair_key, pair_shard
from recon.data_prep.corpus.kg import normalise_name, normalise_title
from recon.data_prep.corpus.kg_tables import bucket, read_part, statement_bucket
from recon.data_prep.corpus.linking import (COUNT_KEYS, Exclusion, candidate_pairs, extract_mentions, finish_sentence,
                      lookup_keys, parse_units, resolve_mentions)

EXCLUSION_TABLE = "exclusion"


def sentence_bucket(sid: str, parts: int) -> int:
    return zlib.crc32(sid.encode("utf-8")) % max(1, parts)


class SentenceKG:
    """The slice of the graph one sentence needs, assembled from its join results."""

    def __init__(self, aliases=None, titles=None, relations=None, names=None) -> None:
        self.aliases: dict[str, tuple[str, ...]] = aliases or {}
        self.titles: dict[str, str] = titles or {}
        self.relations: dict[tuple[str, str], tuple[str, ...]] = relations or {}
        self.names: dict[str, str] = names or {}

    def lookup(self, surface: str) -> tuple[str, ...]:
        return self.aliases.get(normalise_name(surface), ())

    def entity_for_title(self, title: str) -> Optional[str]:
        return self.titles.get(normalise_title(title))

    def relations_between(self, head: str, tail: str) -> tuple[str, ...]:
        return self.relations.get((head, tail), ())


# ------------------------------------------------------------------ stage A (actor pool)

class ExtractBatch:
    """Ray Data callable class: the spaCy pipeline loaded once per actor."""

    def __init__(self, path: str, partitions: int, batch_size: int = 64) -> None:
        from recon.data_prep import spacy_pipeline
        from recon.data_prep.corpus.linking import SPACY_DISABLE

        self.nlp = spacy_pipeline.load(exclude=SPACY_DISABLE)
        self.path, self.partitions, self.batch_size = path, partitions, batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from spacy.tokens import Doc

        units = [u for line, raw in zip(batch["line"], batch["raw"])
                 for u in parse_units(str(raw), path=self.path, line=int(line))]
        inputs = [u.text if u.text is not None else Doc(self.nlp.vocab, words=list(u.tokens)) for u in units]
        out: dict[str, list] = {"bucket": [], "side": [], "sid": [], "payload": []}
        for unit, doc in zip(units, self.nlp.pipe(inputs, batch_size=self.batch_size)):
            out["bucket"].append(sentence_bucket(unit.sentence_id, self.partitions))
            out["side"].append(0)
            out["sid"].append(unit.sentence_id)
            out["payload"].append(json.dumps(extract_mentions(doc, unit)))
        return out


# ------------------------------------------------------------------ partitioned operations

def partitioned(ds, key: str, parts: int, fn: Callable, **kwargs):
    """``fn`` over every group of rows sharing ``key``: a hash shuffle, or one block when ``parts`` is 1."""
    if parts <= 1:
        return ds.repartition(1).map_batches(fn, batch_size=None, batch_format="pyarrow", fn_kwargs=kwargs)
    return ds.groupby(key, num_partitions=parts).map_groups(fn, batch_format="pyarrow", fn_kwargs=kwargs)


def _table_lookup(batch, *, tables: str, exclusion: Optional[str]):
    """Join the requests of some parts with those parts of the tables (one part read at a time)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out: dict[str, list] = {"bucket": [], "side": [], "sid": [], "payload": []}
    rows = batch.to_pydict()
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(rows["group"]):
        by_group[group].append(i)
    for group, idx in sorted(by_group.items()):
        table, part = group.rsplit(":", 1)
        part = int(part)
        keys = sorted({rows["key"][i] for i in idx})
        found: dict[str, Any] = {}
        if table == "aliases":
            data = read_part(tables, "aliases", part)
            data = data.filter(pc.is_in(data.column("alias"), value_set=pa.array(keys)))
            groups: dict[str, list] = defaultdict(list)
            for a, e in zip(data.column("alias").to_pylist(), data.column("entity").to_pylist()):
                groups[a].append(e)
            found = {a: sorted(set(es)) for a, es in groups.items()}
        elif table in ("sitelinks", "names"):
            col, val = ("title", "entity") if table == "sitelinks" else ("entity", "name")
            data = read_part(tables, table, part)
            data = data.filter(pc.is_in(data.column(col), value_set=pa.array(keys)))
            found = dict(zip(data.column(col).to_pylist(), data.column(val).to_pylist()))
        else:  # statements: key "head\ttail"; the exclusion pairs of the same part mark excluded pairs
            heads = sorted({k.split("\t")[0] for k in keys})
            data = read_part(tables, "statements", part)
            data = data.filter(pc.is_in(data.column("head"), value_set=pa.array(heads)))
            relations: dict[str, set] = defaultdict(set)
            for h, r, t in zip(*(data.column(c).to_pylist() for c in ("head", "relation", "tail"))):
                relations[f"{h}\t{t}"].add(r)
            excluded = set()
            if exclusion is not None:
                ex = read_part(exclusion, EXCLUSION_TABLE, part)
                excluded = set(zip(ex.column("lo").to_pylist(), ex.column("hi").to_pylist()))
            for k in keys:
                h, t = k.split("\t")
                if k in relations:
                    found[k] = {"relations": sorted(relations[k]), "excluded": pair_key(h, t) in excluded}
        for i in idx:
            value = found.get(rows["key"][i])
            if value is None:
                continue
            out["bucket"].append(rows["bucket"][i])
            out["side"].append(1)
            out["sid"].append(rows["sid"][i])
            out["payload"].append(json.dumps([table, rows["key"][i], value]))
    return pa.table({"bucket": pa.array(out["bucket"], pa.int64()), "side": pa.array(out["side"], pa.int64()),
                     "sid": pa.array(out["sid"], pa.string()), "payload": pa.array(out["payload"], pa.string())})


def _requests_a(row: dict, *, alias_parts: int, site_parts: int) -> list[dict]:
    surfaces, titles = lookup_keys(json.loads(row["payload"]))
    out = [{"group": f"aliases:{bucket(s, alias_parts)}", "key": s, "sid": row["sid"], "bucket": row["bucket"]}
           for s in sorted(surfaces)]
    out += [{"group": f"sitelinks:{bucket(t, site_parts)}", "key": t, "sid": row["sid"], "bucket": row["bucket"]}
            for t in sorted(titles)]
    return out


def _requests_c(row: dict, *, stmt_parts: int, name_parts: int, want_names: bool) -> list[dict]:
    state = json.loads(row["payload"])
    out = [{"group": f"statements:{statement_bucket(h, t, stmt_parts)}", "key": f"{h}\t{t}", "sid": row["sid"],
            "bucket": row["bucket"]} for h, t in state["pairs"]]
    if want_names and state["pairs"]:
        for entity in sorted({m[0] for m in state["mentions"]}):
            out.append({"group": f"names:{bucket(entity, name_parts)}", "key": entity, "sid": row["sid"],
                        "bucket": row["bucket"]})
    return out


def _by_sentence(batch) -> dict[str, tuple[Optional[str], list]]:
    rows = batch.to_pydict()
    grouped: dict[str, list] = {}
    for side, sid, payload in zip(rows["side"], rows["sid"], rows["payload"]):
        entry = grouped.setdefault(sid, [None, []])
        if side == 0:
            entry[0] = payload
        else:
            entry[1].append(json.loads(payload))
    return grouped


def _resolve(batch):
    """Stage C: one sentence with its alias/sitelink join results -> linked mentions and candidate pairs."""
    import pyarrow as pa

    out: dict[str, list] = {"bucket": [], "side": [], "sid": [], "payload": []}
    buckets = dict(zip(batch.column("sid").to_pylist(), batch.column("bucket").to_pylist()))
    for sid, (payload, found) in sorted(_by_sentence(batch).items()):
        extracted = json.loads(payload)
        kg = SentenceKG(aliases={k: tuple(v) for t, k, v in found if t == "aliases"},
                        titles={k: v for t, k, v in found if t == "sitelinks"})
        counts: Counter = Counter(sentences=1)
        mentions = resolve_mentions(extracted, kg, counts)
        state = {"tokens": extracted["tokens"], "counts": dict(counts),
                 "mentions": [[m.id, m.name, m.start, m.end, m.source] for m in mentions],
                 "pairs": sorted(candidate_pairs(mentions))}
        out["bucket"].append(buckets[sid])
        out["side"].append(0)
        out["sid"].append(sid)
        out["payload"].append(json.dumps(state))
    return pa.table({"bucket": pa.array(out["bucket"], pa.int64()), "side": pa.array(out["side"], pa.int64()),
                     "sid": pa.array(out["sid"], pa.string()), "payload": pa.array(out["payload"], pa.string())})


def _label(batch, *, num_shards: int, name_pairs: frozenset):
    """Stage E: one sentence with its statement/exclusion/name join results -> examples and counts."""
    import pyarrow as pa

    out: dict[str, list] = {"examples_json": [], **{f"n_{k}": [] for k in COUNT_KEYS}}
    for sid, (payload, found) in sorted(_by_sentence(batch).items()):
        state = json.loads(payload)
        relations, excluded, names = {}, set(), {}
        for table, key, value in found:
            if table == "statements":
                h, t = key.split("\t")
                relations[(h, t)] = tuple(value["relations"])
                if value["excluded"]:
                    excluded.add(pair_key(h, t))
            elif table == "names":
                names[key] = value
        kg = SentenceKG(relations=relations, names=names)
        counts = Counter(state["counts"])
        mentions = [Mention(*m) for m in state["mentions"]]
        exclusion = Exclusion(frozenset(excluded), name_pairs)
        examples = finish_sentence(sid, state["tokens"], mentions, kg, exclusion, counts, num_shards)
        out["examples_json"].append(json.dumps([e.to_row() for e in examples]))
        for key in COUNT_KEYS:
            out[f"n_{key}"].append(int(counts.get(key, 0)))
    return pa.table({k: pa.array(v, pa.string() if k == "examples_json" else pa.int64()) for k, v in out.items()})


# ------------------------------------------------------------------ the pipeline

def write_exclusion_table(exclusion: Exclusion, uri: str, parts: int) -> Optional[str]:
    """The evaluation id pairs as a table partitioned like ``statements`` (None when there are none)."""
    import pyarrow.fs as pafs

    from recon.data_prep.corpus.kg_tables import _fs, _join, part_name
    from recon.data_prep.corpus.kg_build import _write_rows

    if not exclusion.id_pairs:
        return None
    by_part: dict[int, dict[str, list]] = {p: {"lo": [], "hi": []} for p in range(parts)}
    for lo, hi in sorted(exclusion.id_pairs):
        part = pair_shard(lo, hi, parts)
        by_part[part]["lo"].append(lo)
        by_part[part]["hi"].append(hi)
    fs, root = _fs(uri)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        fs.create_dir(root, recursive=True)
    for part, columns in by_part.items():
        _write_rows(fs, _join(root, part_name(EXCLUSION_TABLE, part)), columns)
    return uri


def link_with_joins(lines, *, tables: str, kg_manifest: dict, exclusion: Exclusion, exclusion_uri: str,
                    num_shards: int, path: str, batch_size: int, concurrency: int, units_hint: int,
                    sentences_per_partition: int):
    """Stages A-E of the module docstring; a dataset with the in-memory linker's columns (examples_json, n_*)."""
    import ray

    parts = {t: int(info["parts"]) for t, info in kg_manifest["tables"].items()}
    nparts = max(1, math.ceil(units_hint / sentences_per_partition))
    excl = write_exclusion_table(exclusion, exclusion_uri, parts["statements"])
    sentences = lines.map_batches(ExtractBatch, batch_size=batch_size,
                                  compute=ray.data.ActorPoolStrategy(size=concurrency),
                                  fn_constructor_kwargs={"path": path, "partitions": nparts,
                                                         "batch_size": batch_size}).materialize()
    lookup_parts = parts["aliases"] + parts["sitelinks"]
    found = partitioned(
        sentences.flat_map(_requests_a, fn_kwargs={"alias_parts": parts["aliases"],
                                                   "site_parts": parts["sitelinks"]}),
        "group", lookup_parts, _table_lookup, tables=tables, exclusion=excl)
    resolved = partitioned(sentences.union(found), "bucket", nparts, _resolve).materialize()
    want_names = bool(exclusion.name_pairs)
    found = partitioned(
        resolved.flat_map(_requests_c, fn_kwargs={"stmt_parts": parts["statements"], "name_parts": parts["names"],
                                                  "want_names": want_names}),
        "group", parts["statements"] + (parts["names"] if want_names else 0), _table_lookup,
        tables=tables, exclusion=excl)
    return partitioned(resolved.union(found), "bucket", nparts, _label, num_shards=num_shards,
                       name_pairs=exclusion.name_pairs).materialize()


__all__ = ["SentenceKG", "link_with_joins", "partitioned", "sentence_bucket", "write_exclusion_table"]
