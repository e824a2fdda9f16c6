"""``recon data``: inspect benchmarks, draw seeded subsets, and show exactly what the encoder sees.

    recon data stats --dataset semeval [--json]
    recon data split --dataset semeval --fraction 0.05 [--seed N] [--split-source paper] [--json]
    recon data render --dataset semeval --format C+T --limit 3 [--split train] [--encoder NAME]
    recon data stats --path DIR --kind opennre|tacred|chemprot|fewrel|semeval2010 [--on-error skip]
    recon data check --dataset wiki80 --fraction 1.0 [--needs train dev test] [--json]

Every command that reads files takes ``--on-error raise|skip`` (default raise): ``skip`` loads the
good records and prints how many bad ones were skipped, per reason, with their first locations.

``recon data fetch`` is added here by ``recon.orchestration.cli.commands.data_fetch`` when that module exists.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
from collections import Counter

from recon.core.defaults import DEFAULT_ENCODER, DEFAULT_SEED
from recon.core.errors import ReconError
from recon.data_prep.formats import FORMATS_HELP
from recon.data_prep.loaders import KINDS as _LOADER_KINDS

KINDS = tuple(_LOADER_KINDS)  # the loader registry is the one list of kinds


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--dataset", help="registered dataset: semeval, chemprot, wiki80, tacred, fewrel, fewrel-pubmed")
    group.add_argument("--path", help="directory with train/dev/test files of any dataset (needs --kind)")
    parser.add_argument("--kind", choices=KINDS, help="file format for --path")
    parser.add_argument("--data-dir", help="root holding the dataset folders (default: $RECON_DATA_DIR "
                        "or ../shared/datasets)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad records: stop naming file/line/field (raise, default) or skip them and "
                             "report the counts per reason (skip)")


def _load(args: argparse.Namespace):
    from recon.data_prep.registry import load_dataset

    if args.path and not args.kind:
        raise ReconError(f"--path needs --kind ({', '.join(KINDS)})")
    return load_dataset(args.dataset, path=args.path, kind=args.kind, data_dir=args.data_dir,
                        on_error=getattr(args, "on_error", "raise"))


def _print_skips(report, what: str = "") -> None:
    """The skip counts of a load, per reason, with first locations (nothing when none were skipped)."""
    if not report.total_skipped:
        return
    print(f"skipped   {report.total_skipped:,} bad record(s){what} (--on-error skip):")
    for line in report.summary_lines():
        print(f"  {line}")


def _emit_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False))


def cmd_stats(args: argparse.Namespace) -> int:
    from recon.data_prep.registry import paper_size

    ds = _load(args)
    splits = {name: len(xs) for name, xs in ds.splits.items()}
    per_split_labels = {name: len({ex.label for ex in xs}) for name, xs in ds.splits.items()}
    payload = {
        "dataset": ds.name, "kind": ds.kind, "splits": splits, "relations": len(ds.labels),
        "labels_per_split": per_split_labels, "negative_label": ds.negative_label, "metric": ds.metric,
        "max_length": ds.max_length, "missing": ds.missing,
        "paper_sizes": {s: paper_size(ds.name, s) for s in ds.missing if paper_size(ds.name, s)},
        "files": ds.files, "notes": ds.notes, "on_error": ds.on_error, "skipped": dict(ds.report.skipped),
        "skipped_total": ds.report.total_skipped, "skip_locations": ds.report.locations,
    }
    if args.json:
        _emit_json(payload)
        return 0
    print(f"dataset   {ds.name} (kind {ds.kind})")
    for name, count in splits.items():
        print(f"  {name:<6} {count:>7,} examples, {per_split_labels[name]} relations  ({ds.files[name]})")
    for name in ds.missing:
        size = paper_size(ds.name, name)
        print(f"  {name:<6} missing locally" + (f" (paper: {size:,} instances)" if size else ""))
    print(f"relations {len(ds.labels)}" + (" (from rel2id.json)" if "rel2id" in ds.files else ""))
    print(f"negative  {ds.negative_label or 'none'}")
    print(f"metric    {ds.metric}")
    print(f"max len   {ds.max_length}")
    for note in ds.notes:
        print(f"note      {note}")
    _print_skips(ds.report)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from recon.data_prep.splits import resolve_training_subset

    ds = _load(args)
    result = resolve_training_subset(ds, args.fraction, args.seed, source=args.split_source)
    subset = result.examples
    counts = Counter(ex.label for ex in subset)
    per_relation = {label: counts[label] for label in sorted(counts)}
    skipped = Counter(ds.report.skipped) + Counter(result.report.skipped)
    payload = {"dataset": ds.name, "fraction": args.fraction, "seed": args.seed, "source": args.split_source,
               "source_used": result.source_used, "fell_back": result.fell_back, "file": result.file,
               "note": result.note, "size": len(subset), "per_relation": per_relation,
               "on_error": ds.on_error, "skipped": dict(skipped),
               "skip_locations": {**ds.report.locations, **{r: p for r, p in result.report.locations.items()
                                                              if r not in ds.report.locations}}}
    if args.json:
        _emit_json(payload)
        return 0
    used = result.source_used
    detail = {"seeded": f"seeded, seed {args.seed}", "full": "all of train",
              "paper": f"paper file {result.file}"}[used]
    print(f"{ds.name}: {len(subset)} training examples at fraction {args.fraction:g} ({detail})")
    if result.note:
        print(f"note: {result.note}")
    for label, count in per_relation.items():
        print(f"  {count:>6}  {label}")
    _print_skips(ds.report)
    _print_skips(result.report, " in the subset file")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Whether a run on this dataset could start here, from file listings only (exit 1 when not)."""
    from recon.data_prep.registry import check_available

    if args.path and not args.kind:
        raise ReconError(f"--path needs --kind ({', '.join(KINDS)})")
    needs = tuple(args.needs) if args.needs else None
    reasons = check_available(args.dataset, args.data_dir, needs=needs, split=args.fraction,
                              split_source=args.split_source, path=args.path, kind=args.kind)
    name = args.dataset or args.path
    if args.json:
        _emit_json({"dataset": name, "fraction": args.fraction, "split_source": args.split_source,
                    "runnable": not reasons, "reasons": reasons})
    elif reasons:
        print(f"{name} at {args.fraction * 100:g}% ({args.split_source}): cannot run here")
        for reason in reasons:
            print(f"  - {reason}")
    else:
        print(f"{name} at {args.fraction * 100:g}% ({args.split_source}): runnable")
    return 0 if not reasons else 1


def _tokenizer(encoder: str):
    from transformers import AutoTokenizer

    from recon.core.defaults import ENCODER_ALIASES

    encoder = ENCODER_ALIASES.get(encoder, encoder)
    try:
        return AutoTokenizer.from_pretrained(encoder)
    except (OSError, ValueError) as exc:
        raise ReconError(f"cannot load a tokenizer from {encoder!r}: {exc}") from None


def cmd_render(args: argparse.Namespace) -> int:
    from recon.data_prep.encoding import WordPieceCache, encode
    from recon.data_prep.formats import InputFormat, render
    from recon.data_prep.special_tokens import SpecialTokens

    fmt = InputFormat.parse(args.format)
    ds = _load(args)
    if args.split not in ds.splits:
        raise ReconError(f"dataset {ds.name!r} has no {args.split!r} split locally; available: "
                         f"{', '.join(ds.splits)}")
    examples = ds.splits[args.split][: args.limit]
    if fmt.needs_types:
        from recon.data_prep.entity_typing import ensure_types, file_digest

        examples = ensure_types(examples, cache_key=file_digest([ds.files[args.split]]))
    tokenizer = _tokenizer(args.encoder)
    special = SpecialTokens.for_tokenizer(tokenizer)
    pieces = WordPieceCache(tokenizer, special.all_tokens())
    _print_skips(ds.report)
    print(f"{ds.name} {args.split}, format {fmt.value}, max length {ds.max_length}, encoder {args.encoder}"
          + (f" (added tokens: {len(special.added)}; the model must resize its embeddings)" if special.added else ""))
    for example in examples:
        encoded = encode(render(example, fmt, special), pieces, ds.max_length)
        wordpieces = tokenizer.convert_ids_to_tokens(list(encoded.input_ids))
        print(f"\n{example.source}  label={example.label}")
        if fmt.needs_types:
            for role, ent in (("head", example.head), ("tail", example.tail)):
                mention = " ".join(example.tokens[ent.start:ent.end])
                token = special.type_token("subj" if role == "head" else "obj", ent.type)
                print(f"  {role} type {ent.type} (source: {ent.type_source}) -> {token}  for {mention!r}")
        print(f"  head_pos={encoded.head_pos} ({wordpieces[encoded.head_pos]})  "
              f"tail_pos={encoded.tail_pos} ({wordpieces[encoded.tail_pos]})"
              f"  length={len(wordpieces)}{'  truncated' if encoded.truncated else ''}")
        print("  " + " ".join(wordpieces))
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect datasets, draw subsets, render input formats")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    stats = sub.add_parser("stats", help="per-split counts, relations, negative class, metric")
    _add_source_args(stats)
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(func=cmd_stats)

    split = sub.add_parser("split", help="seeded training subset at any fraction (or the paper's files)")
    _add_source_args(split)
    split.add_argument("--fraction", type=float, required=True, help="any fraction in (0, 1], e.g. 0.01, 0.05, 1.0")
    split.add_argument("--seed", type=int, default=DEFAULT_SEED,
                       help=f"seed of the per-relation sampling (default: {DEFAULT_SEED}, as a single run)")
    split.add_argument("--split-source", choices=("seeded", "paper"), default="seeded",
                       help="paper: the train_<fraction> file where one exists, else seeded sampling (said so)")
    split.add_argument("--json", action="store_true", help="machine-readable output")
    split.set_defaults(func=cmd_split)

    check = sub.add_parser("check", help="can a run on this dataset start here? (file listings only, exit 1 if not)")
    _add_source_args(check)
    check.add_argument("--fraction", type=float, default=1.0, help="training fraction in (0, 1] (default 1.0)")
    check.add_argument("--split-source", choices=("seeded", "paper"), default="seeded")
    check.add_argument("--needs", nargs="+", metavar="SPLIT",
                       help="splits the run reads (default: train dev test; few-shot sets: val)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=cmd_check)

    rend = sub.add_parser("render", help="the exact wordpieces the encoder sees for an input format")
    _add_source_args(rend)
    rend.add_argument("--format", required=True, help=FORMATS_HELP)
    rend.add_argument("--limit", type=int, default=3)
    rend.add_argument("--split", default="train")
    rend.add_argument("--encoder", default=DEFAULT_ENCODER,
                      help=f"'minilm' (bundled) or a tokenizer name/path (default: {DEFAULT_ENCODER})")
    rend.set_defaults(func=cmd_render)

    if importlib.util.find_spec("recon.orchestration.cli.commands.data_fetch") is not None:
        importlib.import_module("recon.orchestration.cli.commands.data_fetch").add_fetch_parser(sub)
