"""The two protocols side by side on one fine-tuning setup: per-seed test scores and loss after each epoch.

    python bench/protocol_side_by_side.py                      # SemEval 10%, MiniLM, C+M, both protocols
    python bench/protocol_side_by_side.py --formats C+M OnlyC --variant authors:adam_bias_correction=true

Each run is ``recon finetune`` (``run_finetune``) on the released ``train_0.1`` file with the setup that
compared recon with the authors' code: MiniLM, lr 1e-4, batch 16, length 64, 4 epochs, 16 warm-up steps,
weight decay 1e-5, eps 1e-8, clipping 1.0, full dev and test, seeds 42-46. A *variant* is a protocol plus
point overrides (``authors:adam_bias_correction=true`` is the authors' protocol with torch's bias-corrected
AdamW), so one deviation can be measured at a time. Runs go ``--parallel`` at a time, one thread each;
the JSON lines go to ``--out`` (resumable: finished runs are read back, not trained again).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SETUP = {"dataset": "semeval", "split": 0.1, "data": {"split_source": "paper", "max_length": 64},
         "training": {"lr": 1e-4, "batch_size": 16, "epochs": 4, "warmup_steps": 16, "weight_decay": 1e-5,
                      "adam_eps": 1e-8, "max_grad_norm": 1.0}}


def _parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    return name, overrides


def _config(variant: str, fmt: str, seed: int):
    from recon.core.protocol import point_fields, protocol_layer
    from recon.models.train.finetune_config import FinetuneConfig
    from recon.orchestration.cli.flags import _merge, raw_defaults

    name, overrides = _parse_variant(variant)
    values = _merge(_merge(raw_defaults(FinetuneConfig), protocol_layer(FinetuneConfig, name)), SETUP)
    for point, value in overrides.items():  # a point name -> every field that implements it
        for dotted, field_point in point_fields(FinetuneConfig):
            if field_point == point:
                node = values
                *parents, leaf = dotted.split(".")
                for part in parents:
                    node = node[part]
                node[leaf] = value
    values["input_format"] = fmt
    values["training"]["seed"] = seed
    values["training"]["progress"] = False
    return FinetuneConfig.from_dict(values)


def _run(job: tuple[str, str, int]) -> dict:
    import torch

    torch.set_num_threads(1)
    from recon.models.train.finetune import run_finetune

    variant, fmt, seed = job
    out = run_finetune(_config(variant, fmt, seed))
    return {"variant": variant, "format": fmt, "seed": seed, "protocol": out["protocol"],
            "test_micro_f1": out["test"]["micro_f1"], "test_official": out["test"].get("semeval_official"),
            "best_epoch": out["best_epoch"], "epoch_loss": [round(h["train_loss"], 4) for h in out["history"]],
            "fit_s": out["fit_s"], "n_dev": out["n_dev"], "n_test": out["n_test"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["recon", "authors"])
    parser.add_argument("--formats", nargs="+", default=["C+M"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/protocol_side_by_side.jsonl")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    have = {(r["variant"], r["format"], r["seed"]) for r in done}
    jobs = [(v, f, s) for v in args.variants for f in args.formats for s in args.seeds if (v, f, s) not in have]
    os.environ.setdefault("MALLOC_ARENA_MAX", "1")
    with ProcessPoolExecutor(args.parallel) as pool, out.open("a") as fh:
        for row in pool.map(_run, jobs):
            print(json.dumps(row), flush=True)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            done.append(row)
    print("\n| variant | format | seed | test micro-F1 | official | loss after each epoch | fit s |")
    print("|---|---|---:|---:|---:|---|---:|")
    for r in sorted(done, key=lambda r: (r["format"], r["variant"], r["seed"])):
        if r["variant"] in args.variants and r["format"] in args.formats:
            print(f"| {r['variant']} | {r['format']} | {r['seed']} | {r['test_micro_f1']:.3f} | "
                  f"{r['test_official']:.3f} | {' / '.join(f'{x:.2f}' for x in r['epoch_loss'])} | {r['fit_s']:.0f} |")
    for v in args.variants:
        for f in args.formats:
            rows = [r for r in done if r["variant"] == v and r["format"] == f]
            if rows:
                mf = [r["test_micro_f1"] for r in rows]
                of = [r["test_official"] for r in rows]
                print(f"{v:40s} {f:6s} seeds {len(rows)}: micro-F1 median {statistics.median(mf):.3f} "
                      f"(range {min(mf):.3f}-{max(mf):.3f}), official median {statistics.median(of):.3f} "
                      f"(range {min(of):.3f}-{max(of):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
