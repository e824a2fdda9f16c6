"""``recon pretrain``: CP or MTB pre-training of an encoder on a built corpus, on Ray Train.

    recon corpus demo --out runs/corpus
    recon pretrain --objective cp --corpus runs/corpus --workers 2 --steps 100 --batch-size 32
    recon pretrain --objective cp --corpus runs/corpus --workers 2 --steps 200 --resume   # continue it
    recon finetune --model runs/pretrain/pretrain-cp/final ...

Prints the loss curve (one line per logged step) and the final checkpoint directory.
"""
from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    from recon.orchestration.cli.flags import add_config_arguments
    from recon.orchestration.pretrain.run import PretrainRun

    p = subparsers.add_parser(
        "pretrain",
        help="CP / MTB pre-training on Ray Train (resumable, tracked in MLflow)",
        description=("Contrastive (CP) or matching-the-blanks (MTB) pre-training with MLM, data-parallel "
                     "over Ray Train workers. --batch-size counts positive PAIRS per optimizer step over "
                     "all workers (the paper's N: 2N sentences); it must equal workers x micro-batch x "
                     "accumulation steps. Batch size and steps default to the paper's per objective."),
    )
    flags = add_config_arguments(p, PretrainRun, aliases={"num_workers": ["--workers"]})
    p.set_defaults(func=run_pretrain, config_flags=flags, config_class=PretrainRun)


def config_from_args(args: argparse.Namespace):
    """``PretrainRun`` from parsed arguments: the config's defaults, per objective where they depend on it."""
    from recon.orchestration.cli.flags import config_from_args as build
    from recon.orchestration.pretrain.run import PretrainRun

    return build(PretrainRun, args, args.config_flags)


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
    from recon.core.errors import ReconError
    from recon.core.storage import STORAGE_ENV
    from recon.models.pretrain.config import DEMO_CORPUS
    from recon.orchestration.cluster.job_outputs import browse_command, job_pretrain_place
    from recon.orchestration.tracking.uri import ENV_VAR
    from recon.orchestration.pretrain.progress import read_progress
    from recon.orchestration.pretrain.driver import run_pretraining

    cfg = config_from_args(args)
    cfg.out, cfg.tracking_uri = job_pretrain_place(cfg.out, cfg.tracking_uri or os.environ.get(ENV_VAR),
                                                   os.environ.get(STORAGE_ENV))  # a submitted job: into storage
    if cfg.corpus == DEMO_CORPUS:
        raise ReconError("recon pretrain needs --corpus DIR: build one with `recon corpus build` or "
                         "`recon corpus demo --out DIR` (@demo is built for you only inside a study)")
    print(f"pre-training {cfg.objective} on {cfg.corpus}: {cfg.num_workers} worker(s) x "
          f"{cfg.micro_batch_size} pairs x {cfg.accum_steps} accumulation = {cfg.batch_size} pairs/step, "
          f"{cfg.steps} steps -> {cfg.run_uri}", flush=True)
    final = run_pretraining(cfg)
    rows = read_progress(cfg.run_uri)
    print(format_curve(rows, cfg.objective, every=max(1, len(rows) // 25)))
    print(f"final checkpoint: {final.local}  (published as {final.uri})")
    print(f"browse: {browse_command(cfg.tracking_uri)}")
    return 0
