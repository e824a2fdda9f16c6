"""``recon corpus``: build the pre-training corpus (Ray Data + spaCy + KG linking) and inspect it.

    recon corpus build --text wiki.jsonl --triples kg.tsv --aliases aliases.tsv --out corpus/ \\
        [--wikidata-dump latest-all.json.gz] [--exclude wiki80 fewrel] [--data-dir D] \\
        [--format jsonl|parquet] [--shards N] [--overwrite]
    recon corpus stats corpus/ [--json]
    recon corpus demo --out runs/corpus-demo [--per-relation 30] [--anchor-share 0.5]

``demo`` turns FewRel val_wiki + Wiki80 dev back into raw text, a KG and an alias table, builds a
corpus from them and scores how many of the original annotations it recovers.
"""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    corpus = subparsers.add_parser("corpus", help="build and inspect the CP/MTB pre-training corpus")
    sub = corpus.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND", required=True)

    build = sub.add_parser("build", help="link sentences to a knowledge graph and write corpus shards")
    build.add_argument("--text", required=True, help="input lines: plain text, or JSON lines with "
                       "'text' (char anchors) or 'tokens' (token anchors)")
    build.add_argument("--triples", help="KG triples: head relation tail per line (tab or space)")
    build.add_argument("--aliases", help="alias table: id<TAB>name... or JSON lines {id, aliases}")
    build.add_argument("--wikidata-dump", help="Wikidata JSON dump (one entity per line; .gz/.bz2 ok)")
    build.add_argument("--out", required=True, help="output directory (shards + manifest.json)")
    build.add_argument("--exclude", nargs="*", default=[], metavar="DATASET",
                       help="drop sentences whose unordered entity pair is in these datasets' dev/val/test sets")
    build.add_argument("--data-dir", help="root holding the dataset folders for --exclude")
    build.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    build.add_argument("--shards", type=int, default=4, help="number of shards (>= number of pre-training workers)")
    build.add_argument("--concurrency", type=int, default=1, help="spaCy linking actors")
    build.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    build.set_defaults(func=_build)

    stats = sub.add_parser("stats", help="summarise a built corpus from its manifest")
    stats.add_argument("dir")
    stats.add_argument("--json", action="store_true", help="print the summary as JSON")
    stats.set_defaults(func=_stats)

    demo = sub.add_parser("demo", help="rebuild FewRel val_wiki + Wiki80 dev from raw text and score recovery")
    demo.add_argument("--out", required=True)
    demo.add_argument("--data-dir", help="root holding fewrel/ and wiki80/")
    demo.add_argument("--per-relation", type=int, default=30,
                      help="sentences kept per relation and dataset (0 = all; slow on 2 cores)")
    demo.add_argument("--anchor-share", type=float, default=0.5,
                      help="share of mentions given as anchors in the 'with anchors' run")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)


def _build(args: argparse.Namespace) -> int:
    from recon.data_prep.corpus.builder import BuildConfig, build_corpus

    build_corpus(BuildConfig(
        text=args.text, triples=args.triples, aliases=args.aliases, out=args.out,
        wikidata_dump=args.wikidata_dump, exclude=tuple(args.exclude), data_dir=args.data_dir,
        format=args.format, shards=args.shards, concurrency=args.concurrency, overwrite=args.overwrite,
    ))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from recon.data_prep.corpus import read_manifest
    from recon.data_prep.corpus.report import format_report, summarise

    manifest = read_manifest(args.dir)
    print(json.dumps(summarise(manifest), indent=2) if args.json else format_report(manifest))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from recon.data_prep.corpus.demo_from_benchmarks import run_demo

    run_demo(args.out, data_dir=args.data_dir, per_relation=args.per_relation,
             anchor_share=args.anchor_share, seed=args.seed)
    return 0
