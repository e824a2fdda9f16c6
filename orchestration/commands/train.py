"""``recon finetune`` and ``recon fewshot``: one run, one JSON line on stdout.

    recon finetune --dataset semeval --split 0.1 --format C+M --model bert --encoder minilm --seed 42 \
        --epochs 3 --max-eval 500 --out runs/semeval-cm
    recon finetune --path ~/tacred --kind tacred --split 0.01 --format OnlyC
    recon fewshot --dataset fewrel --n-way 5 --k-shot 1 --format C+M --episodes 1000 --seed 42 \
        --train-episodes 0

Both are thin wrappers around the pure functions Ray Tune trials call
(``recon.models.finetune.run_finetune``, ``recon.models.fewshot.run_fewshot``); torch and transformers are
imported inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import sys


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="C+M", help="input format: C+M, C+T, OnlyC, OnlyM, OnlyT")
    parser.add_argument("--encoder", default="minilm",
                        help="encoder alias, local Hugging Face directory or recon checkpoint (default: minilm)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--max-length", type=int, default=None, help="default: the dataset's (100 / 128)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--data-dir", default=None, help="where dataset folders live (default: see recon data)")
    parser.add_argument("--out", default=None, metavar="DIR", help="write metrics.json and predictions.jsonl here")


def register(subparsers: argparse._SubParsersAction) -> None:
    ft = subparsers.add_parser(
        "finetune", help="fine-tune and evaluate one supervised RE run (test at the best dev epoch)",
        description="Fine-tune an encoder (or the CNN baseline) on one dataset/split/format/seed and print "
                    "one JSON line with dev and test metrics at the best dev epoch.")
    ft.add_argument("--dataset", default=None, help="semeval, chemprot, wiki80, tacred (or --path + --kind)")
    ft.add_argument("--path", default=None, help="a directory with train/dev/test files")
    ft.add_argument("--kind", default=None, help="file format of --path: opennre, tacred, chemprot")
    ft.add_argument("--split", type=float, default=1.0, help="fraction of train: 0.01, 0.1 or 1.0")
    ft.add_argument("--split-source", default="seeded", choices=("seeded", "paper"),
                    help="seeded per-relation subset (default) or the authors' shipped train_0.01/0.1 files")
    ft.add_argument("--model", default="bert",
                    help="bert (the encoder as loaded), cnn, or a recon checkpoint directory")
    ft.add_argument("--epochs", type=int, default=None, help="default 6 (Appendix B)")
    ft.add_argument("--batch-size", type=int, default=None, help="default 64 (Appendix B)")
    ft.add_argument("--max-eval", type=int, default=None,
                    help="cap dev and test at K examples each (fixed random subset; recorded in notes)")
    ft.add_argument("--max-train-steps", type=int, default=None)
    _common(ft)
    ft.set_defaults(func=run_finetune_cmd)

    fs = subparsers.add_parser(
        "fewshot", help="N-way K-shot prototypical-network evaluation on FewRel (optionally trained first)",
        description="Prototypical networks with dot-product similarity over the relation representation. "
                    "Trains on Wiki80 relations outside the evaluation set (FewRel's train_wiki is not "
                    "available), or evaluates the encoder as is with --train-episodes 0.")
    fs.add_argument("--dataset", default="fewrel", help="fewrel (val_wiki) or fewrel-pubmed (val_pubmed)")
    fs.add_argument("--n-way", type=int, default=5)
    fs.add_argument("--k-shot", type=int, default=1)
    fs.add_argument("--q-query", type=int, default=5, help="query instances per relation and episode")
    fs.add_argument("--episodes", type=int, default=10_000, help="evaluation episodes (paper: 10,000)")
    fs.add_argument("--train-episodes", type=int, default=None,
                    help="training episodes (0: evaluate without training; default: see recon fewshot --help)")
    fs.add_argument("--batch-size", type=int, default=None, help="episodes per optimizer step (default 4)")
    _common(fs)
    fs.set_defaults(func=run_fewshot_cmd)


def _emit(result: dict) -> int:
    print(json.dumps(result, separators=(",", ":"), default=str))
    sys.stdout.flush()
    return 0


def _summary(result: dict, keys: tuple[str, ...]) -> dict:
    return {k: result[k] for k in keys if k in result}


def run_finetune_cmd(args: argparse.Namespace) -> int:
    from recon.models.finetune import FinetuneConfig, run_finetune

    if args.dataset is None and args.path is None:
        args.dataset = "semeval"
    cfg = FinetuneConfig(
        dataset=args.dataset, path=args.path, kind=args.kind, data_dir=args.data_dir, split=args.split,
        split_source=args.split_source, input_format=args.format, model=args.model, encoder=args.encoder,
        seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
        max_eval=args.max_eval, max_train_steps=args.max_train_steps, device=args.device,
    )
    result = run_finetune(cfg, out_dir=args.out)
    return _emit(_summary(result, (
        "dataset", "split", "format", "model", "encoder", "seed", "metric", "dev", "test", "best_epoch",
        "n_train", "n_dev", "n_test", "majority_baseline_test", "wall_s", "notes")))


def run_fewshot_cmd(args: argparse.Namespace) -> int:
    from recon.models.fewshot import FewshotConfig, run_fewshot

    overrides = {k: v for k, v in {"lr": args.lr, "max_length": args.max_length, "batch_size": args.batch_size,
                                   "train_episodes": args.train_episodes}.items() if v is not None}
    cfg = FewshotConfig(
        dataset=args.dataset, data_dir=args.data_dir, n_way=args.n_way, k_shot=args.k_shot, q_query=args.q_query,
        input_format=args.format, encoder=args.encoder, seed=args.seed, eval_episodes=args.episodes,
        device=args.device, **overrides,
    )
    result = run_fewshot(cfg, out_dir=args.out)
    return _emit(_summary(result, (
        "dataset", "n_way", "k_shot", "format", "encoder", "seed", "accuracy", "test", "eval_episodes",
        "train_episodes", "trained_on", "wall_s", "notes")))
