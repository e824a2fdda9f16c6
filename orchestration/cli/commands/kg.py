"""``recon kg``: the knowledge graph as hash-partitioned Parquet tables in a storage location.

    recon kg build --wikidata-dump latest-all.json.bz2 --out s3://bucket/kg [--relations fewrel|all|FILE] \\
        [--languages en] [--site enwiki] [--rows-per-part N] [--on-error raise|skip] [--overwrite]
    recon kg build --triples kg.tsv --aliases aliases.tsv --out kg/
    recon kg stats kg/ [--json]

``recon corpus build --kg kg/ ...`` then links against the tables with Ray Data joins
(``recon.data_prep.corpus.join_linking``). The flags of ``build`` are generated from
``recon.data_prep.corpus.kg_build.KGBuildConfig``.
"""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from recon.data_prep.corpus.kg_build import KGBuildConfig

    from recon.orchestration.cli.flags import add_config_arguments

    kg = subparsers.add_parser("kg", help="build the knowledge graph as partitioned tables (Wikidata dump or files)")
    sub = kg.add_subparsers(dest="kg_command", metavar="SUBCOMMAND", required=True)
    build = sub.add_parser("build", help="stream a Wikidata dump (or triples + aliases) into partitioned tables")
    flags = add_config_arguments(build, KGBuildConfig)
    build.set_defaults(func=_build, config_flags=flags, config_class=KGBuildConfig)
    stats = sub.add_parser("stats", help="summarise built tables from their manifest")
    stats.add_argument("dir")
    stats.add_argument("--json", action="store_true", help="print the manifest as JSON")
    stats.set_defaults(func=_stats)


def _build(args: argparse.Namespace) -> int:
    from recon.data_prep.corpus.kg_build import KGBuildConfig, build_kg_tables

    from recon.orchestration.cli.flags import config_from_args

    build_kg_tables(config_from_args(KGBuildConfig, args, args.config_flags))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from recon.data_prep.corpus.kg_tables import format_kg_report, read_kg_manifest

    manifest = read_kg_manifest(args.dir)
    print(json.dumps(manifest, indent=2) if args.json else format_kg_report(manifest))
    return 0
