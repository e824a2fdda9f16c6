"""``recon corpus``: build the pre-training corpus (Ray Data + spaCy + KG linking) and inspect it.

    recon corpus build --text wiki.jsonl --triples kg.tsv --aliases aliases.tsv --out corpus/ \\
        [--wikidata-dump latest-all.json.gz] [--exclude wiki80 fewrel] [--data-dir D] \\
        [--format jsonl|parquet] [--shards N] [--concurrency N] [--num-cpus N] [--overwrite]
    recon corpus build --text enwiki-extracted.jsonl --kg s3://bucket/kg --out corpus/ [--linking join]
    recon corpus stats corpus/ [--json]
    recon corpus demo --out runs/corpus-demo [--per-relation 30] [--anchor-share 0.5] [--shards N]

``demo`` turns FewRel val_wiki + Wiki80 dev back into raw text, a KG and an alias table, builds a
corpus from them and scores how many of the original annotations it recovers.

The flags of ``build`` and ``demo`` are generated from
``recon.data_prep.corpus.config.CorpusBuildConfig`` / ``CorpusDemoConfig`` (``recon.orchestration.cli.flags``),
where each default and its help text are declared; ``--text`` and ``--out`` are required by the
builder (``--out`` by the demo).
"""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Optional


def register(subparsers: argparse._SubParsersAction) -> None:
    from recon.data_prep.corpus.config import DEMO_SETS, CorpusBuildConfig, CorpusDemoConfig

    from recon.orchestration.cli.flags import add_config_arguments

    corpus = subparsers.add_parser("corpus", help="build and inspect the CP/MTB pre-training corpus")
    sub = corpus.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND", required=True)

    # Every flag of build and demo is a field of CorpusBuildConfig / CorpusDemoConfig.
    build = sub.add_parser("build", help="link sentences to a knowledge graph and write corpus shards")
    build_flags = add_config_arguments(build, CorpusBuildConfig)
    build.set_defaults(func=_build, config_flags=build_flags, config_class=CorpusBuildConfig)

    stats = sub.add_parser("stats", help="summarise a built corpus from its manifest")
    stats.add_argument("dir")
    stats.add_argument("--json", action="store_true", help="print the summary as JSON")
    stats.set_defaults(func=_stats)

    demo = sub.add_parser("demo", help="rebuild FewRel val_wiki + Wiki80 dev from raw text and score recovery")
    demo_flags = add_config_arguments(demo, CorpusDemoConfig, nested={"build": ""},
                                      skip=tuple(f"build.{name}" for name in DEMO_SETS))
    demo.set_defaults(func=_demo, config_flags=demo_flags, config_class=CorpusDemoConfig)


def _build(args: argparse.Namespace) -> int:
    from recon.data_prep.corpus.builder import build_corpus
    from recon.data_prep.corpus.config import CorpusBuildConfig

    from recon.orchestration.cli.flags import config_from_args

    from recon.core.preflight import Preflight
    from recon.data_prep.corpus.preflight import build_problems

    config = config_from_args(CorpusBuildConfig, args, args.config_flags)
    pf = Preflight("recon corpus build")
    pf.extend(build_problems(config))
    pf.raise_if_any()  # before Ray starts
    with _ray_for(config, Path(config.out).expanduser().resolve().parent):
        build_corpus(config)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from recon.data_prep.corpus import read_manifest
    from recon.data_prep.corpus.report import format_report, summarise

    manifest = read_manifest(args.dir)
    print(json.dumps(summarise(manifest), indent=2) if args.json else format_report(manifest))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from recon.data_prep.corpus.config import CorpusDemoConfig
    from recon.data_prep.corpus.demo_from_benchmarks import run_demo

    from recon.orchestration.cli.flags import config_from_args

    config = config_from_args(CorpusDemoConfig, args, args.config_flags)
    with _ray_for(config.build, Path(config.out).expanduser().resolve() if config.out else None):
        run_demo(config=config)
    return 0


@contextlib.contextmanager
def _ray_for(build, shared: Optional[Path] = None):
    """Join the cluster Ray would join (never passing num_cpus to it) or start a local Ray; stop what we started.
    On a cluster of several nodes, ``shared`` (where Ray Data's tasks write the shards) must be the same
    folder on every node: checked before any task runs."""
    import ray

    from recon.core.preflight import PreflightError, storage_problems_on_cluster
    from recon.core.ray_session import ensure_ray

    started = ensure_ray(address=build.address, num_cpus=build.num_cpus)
    try:
        if shared is not None:
            shared.mkdir(parents=True, exist_ok=True)
            problems = storage_problems_on_cluster(str(shared), "the folder of --out")
            if problems:
                raise PreflightError("recon corpus", problems)
        yield
    finally:
        if started:
            ray.shutdown()
