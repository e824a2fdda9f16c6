"""``recon pretrain``: CP or MTB pre-training of an encoder on a built corpus, on Ray Train.

    recon corpus demo --out runs/corpus
    recon pretrain --objective cp --corpus runs/corpus --workers 2 --steps 100 --batch-size 32
    recon pretrain --objective cp --corpus runs/corpus --workers 2 --steps 200 --resume   # continue it
    recon finetune --model runs/pretrain/pretrain-cp/final ...

Prints the loss curve (one line per logged step) and the final checkpoint directory.
"""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="CP / MTB pre-training on Ray Train (resumable, tracked in MLflow)",
        description=("Contrastive (CP) or matching-the-blanks (MTB) pre-training with MLM, data-parallel "
                     "over Ray Train workers. --batch-size counts positive PAIRS per optimizer step over "
                     "all workers (the paper's N: 2N sentences); it must equal workers x micro-batch x "
                     "accumulation steps."),
    )
    p.add_argument("--objective", choices=("cp", "mtb"), required=True)
    p.add_argument("--corpus", required=True, help="corpus directory (recon corpus build / demo)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3500, help="optimizer steps (paper: CP 3500, MTB 30000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs per optimizer step, all workers (paper: CP 2048, MTB 256)")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="pairs per worker per forward pass (default: min(32, batch / workers))")
    p.add_argument("--p-blank", type=float, default=0.7, help="entity blanking probability")
    p.add_argument("--encoder", default="minilm", help="alias, HF directory or recon checkpoint")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--warmup", type=int, default=500, help="linear warm-up steps")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.05, help="CP InfoNCE temperature")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--checkpoint-every", type=int, default=500, help="checkpoint every K steps")
    p.add_argument("--max-failures", type=int, default=3, help="worker-group restarts allowed")
    p.add_argument("--out", default="runs/pretrain", help="storage directory of the run")
    p.add_argument("--run-name", default=None, help="run name under --out (default: pretrain-<objective>)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.set_defaults(func=run_pretrain)


def config_from_args(args: argparse.Namespace):
    """``PretrainConfig`` from parsed arguments (batch size defaults to the paper's per objective)."""
    from recon.orchestration.pretrain import PretrainConfig

    batch = args.batch_size or (2048 if args.objective == "cp" else 256)
    return PretrainConfig(
        objective=args.objective, corpus=args.corpus, num_workers=args.workers, steps=args.steps,
        batch_size=batch, micro_batch_size=args.micro_batch_size, p_blank=args.p_blank,
        encoder=args.encoder, lr=args.lr, warmup=args.warmup, max_length=args.max_length,
        temperature=args.temperature, seed=args.seed, checkpoint_every=args.checkpoint_every,
        max_failures=args.max_failures, out=args.out, run_name=args.run_name,
        tracking_uri=args.tracking_uri, cpus_per_worker=args.cpus_per_worker, use_gpu=args.use_gpu,
        resume=args.resume,
    )


def format_curve(rows: list[dict], objective: str, every: int = 1) -> str:
    """The loss curve as a small table: step, total loss, objective loss, MLM loss, accuracy, speed."""
    lines = [f"{'step':>6} {'loss':>8} {objective + '_loss':>8} {'mlm_loss':>8} {'acc':>6} {'sent/s':>8} {'lr':>9}"]
    for row in rows:
        if row["step"] % every and row is not rows[-1]:
            continue
        lines.append(f"{row['step']:>6} {row['loss']:>8.4f} {row[objective + '_loss']:>8.4f} "
                     f"{row['mlm_loss']:>8.4f} {row['contrastive_accuracy']:>6.3f} "
                     f"{row['sentences_per_s']:>8.1f} {row['lr']:>9.2e}")
    return "\n".join(lines)


def run_pretrain(args: argparse.Namespace) -> int:
    from recon.orchestration.pretrain import read_progress, run_pretraining

    cfg = config_from_args(args)
    print(f"pre-training {cfg.objective} on {cfg.corpus}: {cfg.num_workers} worker(s) x "
          f"{cfg.micro_batch_size} pairs x {cfg.accum_steps} accumulation = {cfg.batch_size} pairs/step, "
          f"{cfg.steps} steps -> {cfg.run_dir}", flush=True)
    final = run_pretraining(cfg)
    rows = read_progress(cfg.run_dir)
    print(format_curve(rows, cfg.objective, every=max(1, len(rows) // 25)))
    print(f"final checkpoint: {final}")
    return 0
