"""bf16 autocast on this CPU against float32: training steps and evaluation, side by side in one run.

    python bench/bench_bf16.py                       # MiniLM, batch 16, length 64, 20 steps, 3 rounds, 1 thread
    python bench/bench_bf16.py --threads 2 --max-length 100

The two arms train the same freshly seeded model on the same pre-encoded SemEval C+M batches through
``recon.models.train.loop.fit`` (the trial's loop), with ``TrainConfig(cpu_bf16=False)`` and ``True``; then
each evaluates the same batches (``loop.evaluate``). Rounds alternate the arms' order so machine load hits them
alike; figures are medians over rounds. What bf16 does to scores is measured on whole studies (the demo in both
precisions, README "Performance"), not here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_loop import DEFAULTS, build  # noqa: E402

from recon.core.defaults import DEFAULT_ENCODER, DEFAULT_SEED  # noqa: E402
from recon.core.hardware import cpu_bf16_name  # noqa: E402


def run_arm(fresh_model, batches, steps: int, cpu_bf16: bool) -> tuple[float, float]:
    """(seconds per training step, seconds per evaluated example) of one arm."""
    from recon.models.train.loop import ClassificationTask, evaluate, fit

    cfg = DEFAULTS.replace(epochs=1, device="cpu", progress=False, metric="micro_f1", cpu_bf16=cpu_bf16,
                           eval_batch_size=batches[0]["labels"].numel())
    model = fresh_model()
    train = [batches[i % len(batches)] for i in range(steps)]
    start = time.perf_counter()
    fit(model, ClassificationTask(), train, None, None, cfg)
    step_s = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    evaluate(model, ClassificationTask(), batches, cfg, torch.device("cpu"))
    eval_s = (time.perf_counter() - start) / sum(int(b["labels"].numel()) for b in batches)
    return step_s, eval_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fresh_model, batches = build(args.encoder, "semeval", args.batch_size * args.steps, args.max_length,
                                 args.batch_size, seed=DEFAULT_SEED)
    run_arm(fresh_model, batches[:2], 2, True)  # warm-up: oneDNN's bf16 kernels, allocator
    times: dict[str, list[tuple[float, float]]] = {"fp32": [], "bf16": []}
    for r in range(args.rounds):
        for name in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            times[name].append(run_arm(fresh_model, batches, args.steps, name == "bf16"))
    med = {name: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for name, v in times.items()}
    report = {
        "cpu_bf16": cpu_bf16_name(), "encoder": args.encoder, "batch_size": args.batch_size,
        "max_length": args.max_length, "steps": args.steps, "rounds": args.rounds, "threads": args.threads,
        "fp32_step_s": round(med["fp32"][0], 4), "bf16_step_s": round(med["bf16"][0], 4),
        "step_speedup": round(med["fp32"][0] / med["bf16"][0], 3),
        "fp32_eval_ms_per_example": round(1000 * med["fp32"][1], 3),
        "bf16_eval_ms_per_example": round(1000 * med["bf16"][1], 3),
        "eval_speedup": round(med["fp32"][1] / med["bf16"][1], 3),
    }
    print(f"{cpu_bf16_name()}: training step {report['fp32_step_s']} s fp32 vs {report['bf16_step_s']} s bf16 "
          f"({report['step_speedup']}x); evaluation {report['eval_speedup']}x")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
