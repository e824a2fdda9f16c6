"""``recon finetune`` and ``recon fewshot``: one run, one JSON line on stdout.

    recon finetune --dataset semeval --split 0.1 --format C+M --model bert --encoder minilm --seed 42 \
        --epochs 3 --max-eval 500 --out runs/semeval-cm
    recon finetune --path ~/tacred --kind tacred --split 0.01 --format OnlyC
    recon finetune --model cnn --cnn-hidden-size 230 --cnn-word-vectors glove.6B.50d.txt
    recon fewshot --dataset fewrel --n-way 5 --k-shot 1 --format C+M --episodes 1000 --seed 42 \
        --train-episodes 0
    recon fewshot --path my_fewrel_format_val.json --n-way 5 --k-shot 5 --train-episodes 0

Both are thin wrappers around the pure functions Ray Tune trials call
(``recon.models.train.finetune.run_finetune``, ``recon.models.train.fewshot.run_fewshot``); torch and transformers are
imported inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import sys


# The output directory and the model are the command's own options; every other flag is a field of
# FinetuneConfig / FewshotConfig (recon.orchestration.cli.flags generates them).
FINETUNE_NESTED = {"data": "", "training": "", "cnn": "cnn-"}
FEWSHOT_NESTED = {"settings": "", "settings.training": ""}
FORMAT_ALIAS = {"input_format": ["--format"]}


def _out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, metavar="DIR", help="write metrics.json (and predictions) here")


def register(subparsers: argparse._SubParsersAction) -> None:
    from recon.models.train.fewshot import FewshotConfig
    from recon.models.train.finetune_config import FinetuneConfig

    from recon.orchestration.cli.flags import add_config_arguments

    ft = subparsers.add_parser(
        "finetune", help="fine-tune and evaluate one supervised RE run (test at the best dev epoch)",
        description="Fine-tune an encoder (or the CNN baseline) on one dataset/split/format/seed and print "
                    "one JSON line with dev and test metrics at the best dev epoch.")
    ft_flags = add_config_arguments(ft, FinetuneConfig, nested=FINETUNE_NESTED, aliases=FORMAT_ALIAS)
    _out(ft)
    ft.set_defaults(func=run_finetune_cmd, config_flags=ft_flags, config_class=FinetuneConfig)

    fs = subparsers.add_parser(
        "fewshot", help="N-way K-shot prototypical-network evaluation on FewRel (optionally trained first)",
        description="Prototypical networks with dot-product similarity over the relation representation. "
                    "Evaluates on FewRel val_wiki / val_pubmed or any FewRel-format file (--path); trains on "
                    "Wiki80 relations outside the evaluation set (FewRel's train_wiki is not available), or "
                    "evaluates the encoder as is with --train-episodes 0.")
    fs_flags = add_config_arguments(fs, FewshotConfig, nested=FEWSHOT_NESTED,
                                    aliases={**FORMAT_ALIAS, "settings.eval_episodes": ["--episodes"]})
    _out(fs)
    fs.set_defaults(func=run_fewshot_cmd, config_flags=fs_flags, config_class=FewshotConfig)


def _emit(result: dict, full: dict) -> int:
    """The summary line on stdout; where the outputs went when ``--out`` could not take them (exit 1)."""
    print(json.dumps(result, separators=(",", ":"), default=str))
    sys.stdout.flush()
    if full.get("save_error"):
        print(f"recon: could not write the outputs where asked ({full['save_error']}); they are in "
              f"{full['saved_to']}", file=sys.stderr)
        return 1
    return 0


def _preflight(action: str, args: argparse.Namespace, problems: list) -> None:
    """Refuse before loading anything when the run could not finish or keep its outputs."""
    from recon.core.preflight import Preflight

    pf = Preflight(action)
    if args.out:
        pf.writable_dir(args.out, "--out")
    pf.extend(problems)
    pf.raise_if_any()


def _summary(result: dict, keys: tuple[str, ...]) -> dict:
    return {k: result[k] for k in keys if k in result}


def run_finetune_cmd(args: argparse.Namespace) -> int:
    from recon.models.train.checks import finetune_problems
    from recon.models.train.finetune import run_finetune
    from recon.models.train.finetune_config import FinetuneConfig
    from recon.orchestration.cli.flags import config_from_args

    fixed = {"dataset": None} if getattr(args, "path", None) else {}
    cfg = config_from_args(FinetuneConfig, args, args.config_flags, **fixed)
    _preflight("recon finetune", args, finetune_problems(cfg))
    result = run_finetune(cfg, out_dir=args.out)
    return _emit(_summary(result, (
        "dataset", "split", "format", "model", "encoder", "seed", "protocol", "metric", "reported", "dev", "test",
        "best_epoch", "n_train", "n_dev", "n_test", "majority_baseline_test", "precision", "wall_s", "notes",
        "saved_to")),
        result)


def run_fewshot_cmd(args: argparse.Namespace) -> int:
    from recon.models.train.checks import fewshot_problems
    from recon.models.train.fewshot import FewshotConfig, run_fewshot
    from recon.orchestration.cli.flags import config_from_args

    fixed = {"dataset": None} if getattr(args, "path", None) else {}
    cfg = config_from_args(FewshotConfig, args, args.config_flags, **fixed)
    _preflight("recon fewshot", args, fewshot_problems(cfg))
    result = run_fewshot(cfg, out_dir=args.out)
    return _emit(_summary(result, (
        "dataset", "n_way", "k_shot", "format", "encoder", "seed", "protocol", "accuracy", "test", "eval_episodes",
        "train_episodes", "trained_on", "wall_s", "notes", "saved_to")), result)
