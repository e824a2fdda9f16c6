"""Build the pre-training corpus with Ray Data: input lines -> spaCy + KG linking -> sharded files.

    from recon.data_prep.corpus.builder import build_corpus
    from recon.data_prep.corpus.config import CorpusBuildConfig
    manifest = build_corpus(CorpusBuildConfig(text="wiki.jsonl", triples="kg.tsv", aliases="aliases.tsv",
                                              out="corpus/", exclude=("wiki80", "fewrel"), shards=8))

The settings and their defaults are :class:`~recon.data_prep.corpus.config.CorpusBuildConfig`
(``BuildConfig`` here is the same class, under its older name); ``recon corpus build`` generates its
flags from it.

Pipeline: the driver streams the input once (sha256, validation with file/line errors, byte-offset
chunks of ``chunk_lines``); ``ray.data.from_items(chunks).flat_map(read_chunk)`` reads the lines in
parallel while keeping their line numbers (``read_text`` drops them, and sentence ids and error
messages need them); ``map_batches(_LinkBatch)`` runs spaCy + linking in an actor pool of
``concurrency`` actors that load the pipeline once each; the examples are written per shard
(``write_json``/``write_parquet``) into a temp directory that is renamed into place with the
manifest, so a reader never sees half a corpus. If Ray is not running, a local Ray is started with
``num_cpus`` CPUs (default: all local CPUs) and no dashboard, and shut down at the end; a running Ray
(the demo's, a test's, a study driver's) is used as it is.

Two linking paths, one switch (``linking``; the same corpus either way, the same functions of
``linking`` underneath): ``memory`` ships one :class:`KnowledgeGraph` dict to every linking actor
(small graphs); ``join`` (``join_linking``) joins the sentences' mentions with the hash-partitioned
KG tables of ``recon kg build`` (``--kg URI``, or tables built first from the KG files given), so
no worker holds the graph. ``auto`` picks ``join`` for ``--kg`` or KG files over 64 MiB. Input
lines may also be WikiExtractor ``--json`` articles, whose links map to entities through the
sitelinks table.

The manifest records per shard its row count and an order-independent row digest (for
``corpus_identity``), and under ``exclusion.datasets`` exactly which evaluation splits of which
``--exclude`` datasets were excluded, with their files' sha256s (for ``check_exclusions``). The
hashed ``config`` holds the config's identity fields (``exclude``, ``format``, ``shards``), the input
and exclusion-file digests and the spaCy pipeline id, not paths; the execution knobs are recorded,
unhashed, under ``build``.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import ray  # Ray Data IS this pipeline (the demo imports ray only to start one Ray for its builds)

from recon.data_prep import spacy_pipeline
from recon.core.atomic import publish_dir
from recon.core.preflight import Preflight
from recon.data_prep.corpus.preflight import build_problems
from recon.core.errors import ReconError
from recon.data_prep.corpus.config import CorpusBuildConfig
from recon.data_prep.corpus.exclusion import EVAL_SPLITS, EXCLUSION_RECORD_VERSION, exclusion_from_datasets
from recon.data_prep.corpus.index import shard_dir_name
from recon.core.ray_session import ensure_ray
from recon.data_prep.corpus.kg import KnowledgeGraph
from recon.data_prep.corpus.kg_tables import graph_from_tables, read_kg_manifest
from recon.data_prep.corpus.linking import COUNT_KEYS, Exclusion, Linker, parse_units
from recon.data_prep.corpus.manifest import MANIFEST_VERSION, config_hash, file_sha256, shard_digest, write_manifest
from recon.data_prep.corpus.report import format_report

EXECUTION_KNOBS = ("chunk_lines", "batch_size", "concurrency", "num_cpus", "linking", "sentences_per_partition")  # change speed, never content

BuildConfig = CorpusBuildConfig  # the name this module used before the config moved to .config


@dataclass
class _Scan:
    sha256: str
    lines: int
    chunks: list[dict] = field(default_factory=list)


def scan_input(path: Path, chunk_lines: int) -> _Scan:
    """One streaming pass: validate every line (errors name file and line), hash, cut into chunks."""
    import hashlib

    digest = hashlib.sha256()
    chunks, offset, start_offset, start_line, lineno = [], 0, 0, 1, 0
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            digest.update(raw)
            text = raw.decode("utf-8", errors="strict") if raw else ""
            if text.strip():
                parse_units(text, path=path, line=lineno)
            offset += len(raw)
            if lineno - start_line + 1 == chunk_lines:
                chunks.append({"path": str(path), "offset": start_offset, "length": offset - start_offset,
                               "first_line": start_line})
                start_offset, start_line = offset, lineno + 1
    if offset > start_offset:
        chunks.append({"path": str(path), "offset": start_offset, "length": offset - start_offset,
                       "first_line": start_line})
    return _Scan(digest.hexdigest(), lineno, chunks)


def read_chunk(chunk: dict) -> Iterator[dict]:
    """Rows ``{"line", "raw"}`` of one byte range of the input (non-empty lines only)."""
    with open(chunk["path"], "rb") as handle:
        handle.seek(chunk["offset"])
        data = handle.read(chunk["length"]).decode("utf-8")
    for k, raw in enumerate(data.splitlines()):
        if raw.strip():
            yield {"line": chunk["first_line"] + k, "raw": raw}


class _LinkBatch:
    """Ray Data callable class: one spaCy pipeline and KG per worker, reused for every batch."""

    def __init__(self, kg: KnowledgeGraph, exclusion: Exclusion, num_shards: int, path: str) -> None:
        self.linker = Linker(kg, exclusion=exclusion, num_shards=num_shards)
        self.path = path

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        sentences = [unit for line, raw in zip(batch["line"], batch["raw"])
                     for unit in parse_units(raw, path=self.path, line=int(line))]
        out: dict[str, list] = {"examples_json": [], **{f"n_{k}": [] for k in COUNT_KEYS}}
        for examples, counts in self.linker.link(sentences):
            out["examples_json"].append(json.dumps([e.to_row() for e in examples]))
            for key in COUNT_KEYS:
                out[f"n_{key}"].append(int(counts.get(key, 0)))
        return out


def _expand(row: dict) -> list[dict]:
    return json.loads(row["examples_json"])


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ReconError(f"{out} exists and is not empty; pass --overwrite to replace it")


def build_corpus(config: CorpusBuildConfig, *, log=print) -> dict:
    """Run the pipeline described in the module docstring; return the manifest written to ``out``."""
    config.check()  # choices and bounds (format, shards, ...), in case fields were set after construction
    pf = Preflight("recon corpus build")
    pf.extend(build_problems(config))
    pf.raise_if_any()
    text = Path(config.text)
    out = Path(config.out).resolve()
    _prepare_out(out, config.overwrite)
    mode = linking_mode(config)

    kg = kg_manifest = None
    if config.kg:
        kg_manifest = read_kg_manifest(config.kg)
        if mode == "memory":
            kg = graph_from_tables(config.kg)
    elif mode == "memory":
        kg = KnowledgeGraph.from_files(config.triples, config.aliases, config.wikidata_dump)
    exclude = sorted(set(config.exclude))  # order and repeats of --exclude do not matter
    exclusion, exclusion_report = Exclusion(), {}
    if exclude:
        exclusion, exclusion_report = exclusion_from_datasets(exclude, config.data_dir)
    scan = scan_input(text, config.chunk_lines)
    inputs = {"text": {"path": str(text), "sha256": scan.sha256, "lines": scan.lines}}
    for role in ("triples", "aliases", "wikidata_dump"):
        value = getattr(config, role)
        if value:
            inputs[role] = {"path": str(value), "sha256": file_sha256(value)}
    if kg_manifest is not None:
        inputs["kg"] = {"path": str(config.kg), "sha256": kg_manifest["kg_hash"]}
    # Hashed settings: what decides the corpus's content. Paths (out, inputs, data_dir) are not in it
    # (their contents are, through the sha256s), nor are the execution knobs (recorded under "build").
    settings = config.identity()  # exclude, format, shards (CorpusBuildConfig's identity fields)
    settings["exclude"] = exclude
    settings["exclude_sha256"] = {name: info["sha256"] for name, info in exclusion_report.items()}
    settings["exclude_pairs_hash"] = {name: info["pairs_hash"] for name, info in exclusion_report.items()}
    settings["spacy_pipeline"] = spacy_pipeline.pipeline_id()
    settings["input_sha256"] = {k: v["sha256"] for k, v in inputs.items()}
    settings["pair_exclusion"] = "unordered"

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))  # own KG tables, exclusion parts
    started = False
    try:
        started = ensure_ray(num_cpus=config.num_cpus, log_to_driver=False)  # num_cpus None: all local CPUs
        from ray.data.expressions import col

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        lines = ray.data.from_items(scan.chunks).flat_map(read_chunk)
        if mode == "memory":
            linked = lines.map_batches(
                _LinkBatch, batch_size=config.batch_size, compute=ray.data.ActorPoolStrategy(size=config.concurrency),
                fn_constructor_kwargs={"kg": kg, "exclusion": exclusion, "num_shards": config.shards,
                                       "path": str(text)}).materialize()
            kg_counts = {"triples": kg.num_triples, "entity_pairs": len(kg.relations),
                         "aliases": len(kg.alias_index), "entities_named": len(kg.names)}
        else:
            from recon.data_prep.corpus.join_linking import link_with_joins
            from recon.data_prep.corpus.kg_build import KGBuildConfig, build_kg_tables

            tables = config.kg
            if tables is None:  # the graph files given: their tables first (every relation, as the dict path)
                tables = str(work / "kg")
                kg_manifest = build_kg_tables(KGBuildConfig(
                    triples=config.triples, aliases=config.aliases, wikidata_dump=config.wikidata_dump,
                    out=tables, relations="all"), filter_triples=False, log=lambda *_: None)
            c = kg_manifest["counts"]
            kg_counts = {"triples": c["statements"], "entity_pairs": c["entity_pairs"], "aliases": c["aliases"],
                         "entities_named": c["entities_named"]}
            linked = link_with_joins(lines, tables=tables, kg_manifest=kg_manifest, exclusion=exclusion,
                                     exclusion_uri=str(work / "exclusion"), num_shards=config.shards,
                                     path=str(text), batch_size=config.batch_size, concurrency=config.concurrency,
                                     units_hint=scan.lines, sentences_per_partition=config.sentences_per_partition)
        counts: Counter = Counter()
        for batch in linked.drop_columns(["examples_json"]).iter_batches(batch_format="numpy"):
            counts.update({k: int(batch[f"n_{k}"].sum()) for k in COUNT_KEYS})
        relations: Counter = Counter()
        shards = []
        examples = linked.flat_map(_expand).materialize() if counts["examples"] else None
        if examples is not None:
            for batch in examples.select_columns(["relation"]).iter_batches(batch_format="numpy"):
                relations.update(batch["relation"].tolist())
        for sid in range(config.shards):
            shard_dir = tmp / shard_dir_name(sid)
            shard_dir.mkdir()
            if examples is not None:
                part = examples.filter(expr=col("shard") == sid).repartition(1)
                if config.format == "jsonl":
                    part.write_json(str(shard_dir))
                else:
                    part.write_parquet(str(shard_dir))
            suffix = ".json" if config.format == "jsonl" else ".parquet"
            files = sorted(p for p in shard_dir.iterdir() if p.suffix == suffix)
            rows, digest = shard_digest(files)  # order-independent row digest: corpus_identity uses it
            shards.append({"id": sid, "files": [str(f.relative_to(tmp)) for f in files], "examples": rows,
                           "digest": digest})
        manifest = {
            "version": MANIFEST_VERSION,
            "format": config.format,
            "num_shards": config.shards,
            "config": settings,
            "config_hash": config_hash(settings),
            "build": {**{k: getattr(config, k) for k in EXECUTION_KNOBS}, "linking": mode},
            "inputs": inputs,
            "kg": kg_counts,
            "shards": shards,
            "relations": dict(sorted(relations.items())),
            "counts": {k: int(counts.get(k, 0)) for k in COUNT_KEYS},
            "linking_sources": {"anchor": int(counts["mentions_anchor"]),
                                "ner_alias": int(counts["mentions_ner_alias"])},
            "dropped": {k: int(counts[k]) for k in ("dropped_same_entity", "dropped_overlap",
                                                    "dropped_no_relation", "ner_unlinked", "ner_ambiguous",
                                                    "ner_overlaps_anchor", "excluded_sentences")},
            "exclusion": {"record_version": EXCLUSION_RECORD_VERSION, "pairs": "unordered",
                          "eval_splits": list(EVAL_SPLITS), "data_dir": config.data_dir,
                          "datasets": exclusion_report,
                          "id_pairs": len(exclusion.id_pairs), "name_pairs": len(exclusion.name_pairs)},
        }
        if sum(s["examples"] for s in shards) != counts["examples"]:
            raise ReconError(f"internal check failed: shards hold {sum(s['examples'] for s in shards)} "
                             f"examples but linking produced {counts['examples']}")
        write_manifest(tmp, manifest)
        publish_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        if started:
            ray.shutdown()
    log(format_report(manifest))
    return manifest


MEMORY_KG_MAX_BYTES = 64 << 20  # linking="auto": KG files above this are joined, not loaded into every actor


def linking_mode(config: CorpusBuildConfig) -> str:
    """``memory`` or ``join`` (``auto``: join for --kg tables or KG files over 64 MiB)."""
    if config.linking != "auto":
        return config.linking
    if config.kg:
        return "join"
    size = sum(Path(p).stat().st_size for p in (config.triples, config.aliases, config.wikidata_dump)
               if p and Path(p).is_file())
    return "join" if size > MEMORY_KG_MAX_BYTES else "memory"
