"""Settings of ``recon corpus build`` and ``recon corpus demo``: each default declared once, here.

The command-line flags are generated from these fields (``recon.orchestration.cli.flags``), so a
flag and the config cannot disagree. :meth:`Config.identity` of a :class:`CorpusBuildConfig` is the
part of the build that decides the corpus's content (``exclude``, ``format``, ``shards``); the input
paths enter the manifest's hashed ``config`` through their files' sha256s instead, and the execution
knobs (``chunk_lines``, ``batch_size``, ``concurrency``, ``num_cpus``) are recorded under ``build``.

No Ray import here: the builder (``recon.data_prep.corpus.builder``) is the only module that needs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from recon.core.config import Config, ConfigError, knob

FORMATS = ("jsonl", "parquet")


@dataclass
class CorpusBuildConfig(Config):
    """One corpus build: inputs, output, test-set exclusion, sharding and how the Ray Data job runs."""

    text: Optional[str] = knob(None, "input lines (required): plain text, or JSON lines with 'text' (char "
                                     "anchors) or 'tokens' (token anchors)", identity=False)
    triples: Optional[str] = knob(None, "KG triples: head relation tail per line (tab or space)", identity=False)
    aliases: Optional[str] = knob(None, "alias table: id<TAB>name... or JSON lines {id, aliases}", identity=False)
    wikidata_dump: Optional[str] = knob(None, "Wikidata JSON dump (one entity per line; .gz/.bz2 ok)",
                                        identity=False)
    kg: Optional[str] = knob(None, "knowledge-graph tables built by `recon kg build` (path or URI), instead of "
                                   "--triples/--aliases/--wikidata-dump", identity=False)
    linking: Literal["auto", "memory", "join"] = knob(
        "auto", "how sentences meet the graph: 'join' (Ray Data joins against the partitioned KG tables: no worker "
                "holds the graph), 'memory' (the whole graph as a dict in every linking actor: small graphs), "
                "'auto' (join with --kg or KG files over 64 MiB, else memory); both give the same corpus",
        choices=("auto", "memory", "join"), identity=False)
    sentences_per_partition: int = knob(50_000, "join linking: sentences per hash partition of the sentence-side "
                                                "shuffles (the partitions follow the input size)", ge=1,
                                        identity=False)
    out: Optional[str] = knob(None, "output directory (required): shards + manifest.json", identity=False)
    exclude: tuple[str, ...] = knob((), "drop sentences whose unordered entity pair is in these datasets' "
                                        "dev/val/test sets")
    data_dir: Optional[str] = knob(None, "root holding the dataset folders for --exclude", identity=False)
    format: Literal["jsonl", "parquet"] = knob("jsonl", "shard file format", choices=FORMATS)
    shards: int = knob(4, "number of shards (>= number of pre-training workers)", ge=1)
    chunk_lines: int = knob(2000, "input lines per read task", ge=1, identity=False)
    batch_size: int = knob(256, "sentences per spaCy batch", ge=1, identity=False)
    concurrency: int = knob(1, "spaCy linking actors (each loads the pipeline once)", ge=1, identity=False)
    num_cpus: Optional[int] = knob(None, "CPUs of the local Ray started for the build (default: all local "
                                         "CPUs; more than --concurrency); unused when Ray is already running",
                                   ge=2, identity=False)
    overwrite: bool = knob(False, "replace an existing --out directory", identity=False)
    address: Optional[str] = knob(None, "Ray cluster to build on (default: $RAY_ADDRESS, a cluster started here "
                                        "with `ray start`, else a local Ray); inputs and --out must then be on "
                                        "storage every node sees", identity=False)

    def check(self) -> None:
        super().check()
        self.exclude = tuple(self.exclude or ())  # a list from YAML / the command line
        if self.num_cpus is not None and self.num_cpus <= self.concurrency:
            # Each linking actor holds a CPU for the whole build; reading the input needs one more,
            # or Ray Data waits for a CPU that never frees.
            raise ConfigError("num_cpus", f"must be more than concurrency ({self.concurrency}): each linking "
                                          f"actor holds one CPU and reading needs another, got {self.num_cpus}")


@dataclass
class CorpusDemoConfig(Config):
    """``recon corpus demo``: FewRel val_wiki + Wiki80 dev turned back into raw text, rebuilt and scored.

    ``build`` holds the build's sharding and execution settings; the demo sets its inputs, output,
    exclusions and ``overwrite`` itself, per run.
    """

    out: Optional[str] = knob(None, "output directory (required): inputs, one corpus per run, demo_report.json",
                              identity=False)
    data_dir: Optional[str] = knob(None, "root holding fewrel/ and wiki80/", identity=False)
    per_relation: int = knob(30, "sentences kept per relation and dataset (0 = all; slow on 2 cores)", ge=0)
    anchor_share: float = knob(0.5, "share of mentions given as anchors in the 'with anchors' run", ge=0, le=1)
    seed: int = knob(0, "seed of the per-relation subsample and of the anchors given")
    build: CorpusBuildConfig = knob(factory=CorpusBuildConfig, help="sharding and execution of each build")


# The fields of CorpusBuildConfig that the demo sets itself (no flag on `recon corpus demo`).
DEMO_SETS = ("text", "triples", "aliases", "wikidata_dump", "kg", "out", "exclude", "data_dir", "overwrite")

__all__ = ["CorpusBuildConfig", "CorpusDemoConfig", "DEMO_SETS", "FORMATS"]
