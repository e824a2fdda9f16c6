"""The Ray Train worker of CP/MTB pre-training: the Ray-free loop of ``recon.models.pretrain.loop`` plus
the few lines a cluster adds, marked ``[Ray n]``.

A worker sees nothing of the driver's disk. What it reads arrives through the storage location:
the corpus and a local starting encoder as content-addressed folders fetched once per node
(``recon.core.node_cache.fetch_dir``, verified), checkpoints through Ray Train's storage
(``ray.train.get_checkpoint`` or, newer, a complete one listed in storage). What it writes leaves
the same way: checkpoints via ``ray.train.report``, and each logged step's metrics as a small file
in the run's storage that the driver polls into MLflow (workers never open the tracking store).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from recon.core.errors import ReconError

from recon.orchestration.pretrain.checkpoints import TRAIN_STATE_DIR, checkpoint_name, latest_checkpoint, step_of
from recon.core.storage import Storage
from recon.core.node_cache import fetch_dir


def _all_reduce(values: dict[str, float], sums: tuple[str, ...], device) -> dict[str, float]:
    """Average (or, for ``sums``, add) per-worker figures over the worker group."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    world = dist.get_world_size()
    return {k: (float(v) if k in sums else float(v) / world) for k, v in zip(keys, t.tolist())}


def _gather_objects(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _maybe_fail(fail_at_step: Optional[int], marker: Optional[str], step: int, rank: int, world: int) -> None:
    """Test hook: kill the last worker process outright (no exception, no cleanup), once."""
    if fail_at_step != step or rank != world - 1 or not marker:
        return
    if Path(marker).exists():
        return
    Path(marker).write_text(f"rank {rank} exited at step {step}\n")
    os._exit(1)


def _restore_dir(checkpoint, run: Storage, stack: contextlib.ExitStack) -> Optional[Path]:
    """Where to restore from: Ray's latest registered checkpoint, or a newer complete one in storage.

    Ray Train registers a reported checkpoint when its controller next polls the workers; a worker
    that dies right after a report can leave a persisted checkpoint the controller never saw, and
    restarting from the older one would redo finished steps. The run's storage folder belongs to
    this run alone (the driver refuses a used one without ``resume``), so its newest complete
    checkpoint is safe to take.
    """
    import ray.train

    newest = latest_checkpoint(run)
    ray_step = step_of(Path(checkpoint.path).name) if checkpoint is not None else None
    if newest is not None and (ray_step is None or (step_of(Path(newest).name) or 0) > ray_step):
        checkpoint = ray.train.Checkpoint(path=run.path(newest), filesystem=run.filesystem)
    if checkpoint is None:
        return None
    return Path(stack.enter_context(checkpoint.as_directory()))


def train_loop_per_worker(config: dict) -> None:
    """Build or restore the model and sampler, then run steps until ``steps``, reporting as it goes."""
    import ray.train
    import ray.train.torch
    import torch

    from recon.data_prep.corpus import load_corpus, read_manifest, shards_for_rank
    from recon.data_prep.samplers import CPSampler, MTBSampler
    from recon.models.nets.checkpoint import load_checkpoint, save_checkpoint
    from recon.models.nets.loading import load_encoder
    from recon.models.pretrain.state import load_train_state, rng_state, save_train_state, set_rng_state
    from recon.models.pretrain.step import PretrainNet
    from recon.models.pretrain.batches import TokenContext
    from recon.models.pretrain.heldout import evaluate_heldout, heldout_batches, split_heldout
    from recon.models.pretrain.loop import run_steps
    from recon.models.train.optim import build_optimizer, build_scheduler
    from recon.models.nets.seed import seed_everything

    from recon.orchestration.pretrain.run import HELDOUT_START_FILE, PretrainRun, progress_rel

    cfg = PretrainRun.from_dict(config["cfg"])
    run = Storage.from_uri(config["run_uri"])
    context = ray.train.get_context()                                   # [Ray 1] who am I
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    device = ray.train.torch.get_device()
    corpus_dir = fetch_dir(config["corpus"]["uri"], config["corpus"]["digest"])
    encoder = config["encoder"]
    start_from = str(fetch_dir(encoder["uri"], encoder["digest"])) if isinstance(encoder, dict) else encoder

    with contextlib.ExitStack() as stack:
        ckpt_dir = _restore_dir(ray.train.get_checkpoint(), run, stack)  # [Ray 2] restore
        seed_everything(cfg.seed)  # same fresh MLM head on every rank (DDP broadcasts rank 0's anyway)
        bundle = load_checkpoint(ckpt_dir, mlm_head=True) if ckpt_dir else load_encoder(start_from, mlm_head=True)
        manifest = read_manifest(corpus_dir)
        num_shards = int(manifest.get("num_shards", len(manifest.get("shards", [])) or 1))
        loaded = load_corpus(corpus_dir, shard_ids=shards_for_rank(num_shards, rank, world))
        # held-out sentences (a hash of their text: the same slice on every rank) are never trained on
        index, heldout_index = split_heldout(loaded, float(cfg.heldout_fraction))
        sampler_cls = CPSampler if cfg.objective == "cp" else MTBSampler
        sampler = sampler_cls(index, int(cfg.micro_batch_size), p_blank=cfg.p_blank, seed=cfg.seed,
                              rank=rank, world_size=world)
        # gradient buckets double as .grad (no copy in and out of them each step): pure speed
        net = ray.train.torch.prepare_model(PretrainNet(bundle.model),  # [Ray 3] DDP
                                            parallel_strategy_kwargs={"gradient_as_bucket_view": True})
        train_cfg = cfg.optimizer_config()
        optimizer = build_optimizer(net, train_cfg, device)  # fused AdamW (CPU and CUDA)
        scheduler = build_scheduler(optimizer, cfg.steps, train_cfg)
        start_step = 0
        if ckpt_dir:
            extra = load_train_state(ckpt_dir / TRAIN_STATE_DIR, optimizer=optimizer, scheduler=scheduler)
            if int(extra["world_size"]) != world:
                raise ReconError(f"{cfg.name}: checkpoint saved with {extra['world_size']} workers, resumed with "
                                 f"{world}; the sampler streams are per worker, so the worker count must match")
            start_step = int(extra["step"])
            sampler.load_state_dict(extra["samplers"][rank])
            set_rng_state(extra["rng"][rank])
    starts = _gather_objects(start_step)
    if len(set(starts)) != 1:
        raise ReconError(f"workers would resume from different steps {starts}; do all nodes see {run.uri}?")

    tctx = TokenContext.for_bundle(bundle, cfg.max_length, cfg.truncation)
    encoder_module = getattr(net, "module", net).encoder
    eval_batches = heldout_batches(heldout_index, cfg.objective, tctx, batches=int(cfg.heldout_batches),
                                   pairs=int(cfg.micro_batch_size), p_blank=cfg.p_blank, seed=cfg.seed,
                                   rank=rank, world_size=world)
    evaluate = bool(_all_reduce({"n": float(len(eval_batches))}, sums=("n",), device=device)["n"])

    def heldout() -> dict[str, float]:
        """Held-out accuracy and its chance level, all workers' batches together."""
        score = evaluate_heldout(net, eval_batches, cfg.objective, device=device, bf16=cfg.bf16,
                                 cpu_bf16=cfg.cpu_bf16).as_dict()
        total = _all_reduce(score, sums=tuple(score), device=device)
        items = max(total["items"], 1.0)
        return {"heldout_contrastive_accuracy": total["correct"] / items,
                "heldout_chance_accuracy": total["chance"] / items, "heldout_items": total["items"]}

    if evaluate and start_step == 0:  # the untrained encoder's figures, for the "does it learn" comparison
        initial = heldout()
        if rank == 0:
            run.write_json(HELDOUT_START_FILE, {"step": 0, **initial})
    net.train()
    steps = run_steps(cfg, net, sampler, index, tctx, optimizer=optimizer, scheduler=scheduler, device=device,
                      rank=rank, start_step=start_step, no_sync=getattr(net, "no_sync", None),
                      read_at=lambda s: s % cfg.checkpoint_every == 0,
                      before_step=lambda s: _maybe_fail(cfg.fail_at_step, cfg.fail_marker, s, rank, world))
    counts = ("sentences", "tokens", "truncated", "context_split", "entity_truncated", "steps")
    attempt = f"{time.time_ns():020d}-from{start_step:06d}"  # progress files sort by attempt, then step
    for step, stats in steps:
        if stats is None:  # figures stay on the device until a log or checkpoint step
            continue
        local = stats.as_dict()
        # one all-reduce per read (not per step); the window's figures, averaged or summed over workers
        merged = _all_reduce({k: local[k] for k in ("loss", "objective_loss", "mlm_loss", "accuracy", "seconds",
                                                    "cpu_seconds", *counts)}, sums=counts, device=device)
        n = max(merged["steps"] / world, 1.0)  # optimizer steps in the window
        row = {
            "step": step, "resumed_from": start_step,
            "loss": merged["loss"], f"{cfg.objective}_loss": merged["objective_loss"],
            "mlm_loss": merged["mlm_loss"], "contrastive_accuracy": merged["accuracy"],
            # wall time of the window's steps (batch building, sampling and syncs included)
            "sentences_per_s": merged["sentences"] / max(merged["seconds"], 1e-9),
            "step_s": merged["seconds"] / n, "worker_cpu_s_per_step": merged["cpu_seconds"] / n,
            "lr": stats.lr, "grad_norm": stats.grad_norm,
            # sentences per step windowed to max_length / with entities far apart / with an entity cut
            "truncated_sentences": merged["truncated"] / n, "context_split_sentences": merged["context_split"] / n,
            "entity_truncated_sentences": merged["entity_truncated"] / n,
        }
        last = step == cfg.steps
        checkpoint = step % cfg.checkpoint_every == 0 or last
        if checkpoint and evaluate:
            row.update(heldout())
        if rank == 0 and (step % cfg.log_every == 0 or checkpoint):
            run.write_json(progress_rel(attempt, step), row)              # the driver polls these into MLflow
        if checkpoint:
            states = _gather_objects({"sampler": sampler.state_dict(), "rng": rng_state()})
            if rank == 0:
                with tempfile.TemporaryDirectory(prefix="recon-pretrain-") as tmp:
                    out = Path(tmp) / "ckpt"
                    save_checkpoint(out, encoder_module, bundle.tokenizer, special=bundle.special,
                                    base_encoder=cfg.encoder_name, objective=cfg.objective, step=step,
                                    extra={"pretrain_config": cfg.identity()})
                    save_train_state(out / TRAIN_STATE_DIR, optimizer=optimizer, scheduler=scheduler,
                                     extra={"step": step, "world_size": world,
                                            "samplers": [s["sampler"] for s in states],
                                            "rng": [s["rng"] for s in states]})
                    ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(str(out)),  # [Ray 4]
                                     checkpoint_dir_name=checkpoint_name(step))
            else:
                ray.train.report(row, checkpoint=None, checkpoint_dir_name=checkpoint_name(step))


__all__ = ["train_loop_per_worker"]
