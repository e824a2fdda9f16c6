"""Does CP pre-training help? Fine-tune a pre-trained checkpoint and the plain encoder on the same
SemEval split with the same seeds, and print both medians (the paper reports the median of 5 seeds).

    python bench/pretrain_vs_base_semeval.py --checkpoint runs/pretrain/pretrain-cp/final \\
        --split 0.01 --max-eval 600 --json results.json          # seeds: the paper's five (PAPER_SEEDS)

The pre-training corpus must not contain SemEval's evaluation entity pairs: build it with
``recon corpus build ... --exclude semeval``. Each trial is ``recon.models.train.finetune.run_finetune`` with
Appendix B defaults (lr 3e-5, batch 64, 6 epochs, length 100, test at the best dev epoch); only
``--max-eval`` (a fixed random subset of dev and test, the same for every trial) departs from them,
to keep a CPU run short.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.core.defaults import DEFAULT_ENCODER, PAPER_SEEDS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="recon checkpoint from `recon pretrain`")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="the un-pretrained encoder it started from")
    p.add_argument("--dataset", default="semeval")
    p.add_argument("--split", type=float, default=0.01)
    p.add_argument("--format", default="C+M")
    p.add_argument("--seeds", type=int, nargs="+", default=list(PAPER_SEEDS))
    p.add_argument("--max-eval", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="default: TrainConfig's (Appendix B: 6)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from recon.models.train.finetune_config import DataOptions, FinetuneConfig
    from recon.models.train.finetune import run_finetune
    from recon.models.train.config import TrainConfig

    torch.set_num_threads(2)
    models = {"base": "bert", "cp": args.checkpoint}
    scores: dict[str, list[float]] = {name: [] for name in models}
    trials = []
    for seed in args.seeds:
        for name, model in models.items():
            t0 = time.perf_counter()
            training = TrainConfig(seed=seed, progress=False, **({"epochs": args.epochs} if args.epochs else {}))
            out = run_finetune(FinetuneConfig(dataset=args.dataset, split=args.split, input_format=args.format,
                                              model=model, encoder=args.encoder, training=training,
                                              data=DataOptions(max_eval=args.max_eval)))
            score = float(out["test"]["score"])
            scores[name].append(score)
            trials.append({"model": name, "seed": seed, "test": score, "dev": (out.get("dev") or {}).get("score"),
                           "best_epoch": out.get("best_epoch"), "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(trials[-1]), flush=True)
    medians = {name: statistics.median(v) for name, v in scores.items()}
    print(f"\n{args.dataset} {args.split:g} {args.format}, seeds {args.seeds}, max_eval {args.max_eval}")
    for name, values in scores.items():
        print(f"{name:>5}: median {medians[name]:.4f}  ({', '.join(f'{v:.4f}' for v in values)})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "trials": trials,
                                         "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
