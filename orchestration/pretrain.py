"""CP/MTB pre-training on Ray Train: data-parallel workers, resumable checkpoints, MLflow tracking.

    cfg = PretrainConfig(objective="cp", corpus="runs/corpus", num_workers=2, steps=200, batch_size=64)
    final_dir = run_pretraining(cfg)          # a recon checkpoint: `recon finetune --model final_dir`

One optimizer step = ``num_workers x micro_batch_size x accum`` pairs (= ``batch_size``, the paper's
"batch size N": N positive pairs, 2N sentences). Each worker reads only its corpus shards
(``shards_for_rank``) and draws its own seeded sampler stream; the step itself lives in
``recon.models.pretraining`` and knows nothing about Ray.

Layout under ``<out>/<run name>/`` (``run_dir``): Ray's ``checkpoint_step_NNNNNN/`` directories
(encoder via ``recon.models.checkpoint.save_checkpoint`` + ``train/`` with optimizer tensors as
safetensors and scheduler/sampler/RNG state as JSON), ``config.json`` (what the run was started
with), ``mlflow_run.json`` (the MLflow run to continue on resume), ``progress.jsonl`` (one line per
optimizer step, from rank 0) and ``final/`` (the encoder of the last step).

Fault tolerance: a dead worker makes Ray Train restart the worker group (``max_failures`` times);
every worker then starts from ``ray.train.get_checkpoint()`` at the saved step, with the saved
sampler position. Re-running with ``resume=True`` and the same ``out``/``run_name`` restores the
latest checkpoint of the run's storage the same way (Ray Train reloads its checkpoint list from
``storage_path/name``). MLM masks and dropout are seeded per (seed, step, rank), so a resumed run
repeats the uninterrupted run's batches exactly.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recon.data_prep.configuration import knob
from recon.data_prep.errors import ReconError
from recon.data_prep.registry import fewshot_datasets, supervised_datasets
from recon.models.pretrain_config import PretrainConfig

from .tracking_uri import DEFAULT_TRACKING_URI, absolute_tracking_uri

CHECKPOINT_PREFIX = "checkpoint_step_"
TRAIN_STATE_DIR = "train"
PROGRESS_FILE = "progress.jsonl"
CONFIG_FILE = "config.json"
MLFLOW_FILE = "mlflow_run.json"
EXPERIMENT = "recon-pretrain"
# Fields that may change when a run is resumed; every other field must match the original run (a
# changed ``steps`` would rebuild the LR schedule with a new total, so the rate would jump).
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "max_failures", "tracking_uri", "resume", "evaluate_on", "data_dir",
                               "allow_leakage",
                               "fail_at_step", "fail_marker", "log_every", "use_gpu", "cpus_per_worker"})


@dataclass
class PretrainRun(PretrainConfig):
    """A pre-training run: the settings that shape the encoder plus where the run lives and is tracked."""

    out: str = knob("runs/pretrain", "storage directory of the run", identity=False)
    run_name: str | None = knob(None, "run name under --out (default: pretrain-<objective>)", identity=False)
    tracking_uri: str = knob(DEFAULT_TRACKING_URI, "MLflow tracking URI", identity=False)
    experiment: str = knob(EXPERIMENT, "MLflow experiment", identity=False)
    resume: bool = knob(False, "continue the run in --out from its latest checkpoint", identity=False)
    evaluate_on: list[str] = knob(factory=lambda: list(supervised_datasets() + fewshot_datasets()),
                                  help="datasets the encoder will be evaluated on: the corpus must exclude their "
                                       "entity pairs (unless allow_leakage)", identity=False)
    data_dir: str | None = knob(None, "where the evaluated datasets live, to check the corpus's exclusions against "
                                      "their current files", identity=False)
    # Fault injection for tests: the last rank exits abruptly at the start of this step, once
    # (``fail_marker`` is created first, and its presence disables the failure).
    fail_at_step: int | None = knob(None, "test hook: the last worker exits at this step", identity=False, cli=False)
    fail_marker: str | None = knob(None, "test hook: file whose presence disables fail_at_step", identity=False,
                                   cli=False)

    @property
    def name(self) -> str:
        return self.run_name or f"pretrain-{self.objective}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out).expanduser().resolve() / self.name


# ---------------------------------------------------------------------------------------------
# Paths and checkpoints on the driver side
# ---------------------------------------------------------------------------------------------

def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint_step_NNNNNN`` directory holding a complete training state."""
    if not path.name.startswith(CHECKPOINT_PREFIX):
        return None
    required = ("recon.json", "model.safetensors", f"{TRAIN_STATE_DIR}/optimizer.safetensors",
                f"{TRAIN_STATE_DIR}/train_state.json")
    if not all((path / name).is_file() for name in required):
        return None
    try:
        return int(path.name[len(CHECKPOINT_PREFIX):])
    except ValueError:
        return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``run_dir`` (None when there is none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = [(s, p) for p in run_dir.iterdir() if (s := checkpoint_step(p)) is not None]
    return max(found)[1] if found else None


def _check_resume(cfg: PretrainRun) -> None:
    run_dir = cfg.run_dir
    latest = latest_checkpoint(run_dir)
    if not cfg.resume:
        if latest is not None or (run_dir / CONFIG_FILE).exists():
            raise ReconError(
                f"{run_dir} already holds a pre-training run; pass --resume to continue it from "
                f"{latest.name if latest else 'its start'}, or choose another --out / run name"
            )
        return
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        raise ReconError(f"nothing to resume: {saved_path} does not exist (was the run started with this --out?)")
    saved = json.loads(saved_path.read_text())
    current = cfg.to_dict()
    diffs = [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in current
             if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]]
    if diffs:
        raise ReconError(f"{saved_path}: --resume must use the run's settings; changed: " + "; ".join(diffs))


# ---------------------------------------------------------------------------------------------
# MLflow (driver creates/continues the run, rank 0 logs metrics into it)
# ---------------------------------------------------------------------------------------------

def _mlflow_run(cfg: PretrainRun) -> str:
    """Create the run (params = config) or reopen the one recorded in ``mlflow_run.json``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    record = cfg.run_dir / MLFLOW_FILE
    if cfg.resume and record.is_file():
        run_id = json.loads(record.read_text())["run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    experiment = client.get_experiment_by_name(cfg.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.experiment)
    run = client.create_run(experiment_id, run_name=cfg.name, tags={"recon.kind": "pretrain",
                                                                   "recon.objective": cfg.objective})
    params = {k: ("" if v is None else str(v))[:500] for k, v in cfg.to_dict().items()
              if not k.startswith("fail_")}
    params["accum_steps"] = str(cfg.accum_steps)
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    record.write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": cfg.tracking_uri}))
    return run.info.run_id


class _MetricLogger:
    """Rank 0's MLflow writer: batches metrics by step into the driver's run."""

    def __init__(self, tracking_uri: str, run_id: str | None) -> None:
        self.client, self.run_id = None, run_id
        if run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=batch)


# ---------------------------------------------------------------------------------------------
# The per-worker training loop
# ---------------------------------------------------------------------------------------------

def _all_reduce_mean(values: dict[str, float], sums: tuple[str, ...], device) -> dict[str, float]:
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


def _maybe_fail(cfg: PretrainRun, step: int, rank: int, world: int) -> None:
    """Test hook: kill the last worker process outright (no exception, no cleanup), once."""
    if cfg.fail_at_step != step or rank != world - 1 or not cfg.fail_marker:
        return
    marker = Path(cfg.fail_marker)
    if marker.exists():
        return
    marker.write_text(f"rank {rank} exited at step {step}\n")
    os._exit(1)


def _restore_dir(checkpoint, run_dir: Path, stack) -> Path | None:
    """Where to restore from: Ray's latest registered checkpoint, or a newer complete one on disk.

    Ray Train registers a reported checkpoint when its controller next polls the workers; a worker
    that dies right after a report can leave a persisted checkpoint the controller never saw, and
    restarting from the older one would redo (and re-log) finished steps. The run directory belongs
    to this run alone (``run_pretraining`` refuses a used one without ``resume``), so its newest
    complete checkpoint is safe to take.
    """
    on_disk = latest_checkpoint(run_dir)
    if checkpoint is not None:
        ray_dir = Path(stack.enter_context(checkpoint.as_directory()))
        ray_step = checkpoint_step(ray_dir) or 0
        if on_disk is None or (checkpoint_step(on_disk) or 0) <= ray_step:
            return ray_dir
    return on_disk


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: build or restore the model and sampler, then run steps until ``steps``."""
    import contextlib

    import ray.train
    import ray.train.torch
    import torch

    from recon.data_prep.corpus import load_corpus, read_manifest, shards_for_rank
    from recon.data_prep.samplers import CPSampler, MTBSampler
    from recon.models.checkpoint import load_checkpoint, save_checkpoint
    from recon.models.encoder import load_encoder
    from recon.models.pretrain_state import load_train_state, rng_state, save_train_state, set_rng_state
    from recon.models.pretraining import (PretrainNet, StepSettings, TokenContext, build_batch, optimizer_step,
                                    reseed_step, step_generator)
    from recon.models.training import TrainConfig, build_optimizer, build_scheduler, seed_everything

    cfg = PretrainRun.from_dict(config["cfg"])
    run_id = config.get("mlflow_run_id")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    device = ray.train.torch.get_device()
    run_dir = cfg.run_dir

    with contextlib.ExitStack() as stack:
        ckpt_dir = _restore_dir(ray.train.get_checkpoint(), run_dir, stack)
        seed_everything(cfg.seed)  # same fresh MLM head on every rank (DDP broadcasts rank 0's anyway)
        bundle = (load_checkpoint(ckpt_dir, mlm_head=True) if ckpt_dir
                  else load_encoder(cfg.encoder_name, mlm_head=True))
        manifest = read_manifest(cfg.corpus)
        num_shards = int(manifest.get("num_shards", len(manifest.get("shards", [])) or 1))
        index = load_corpus(cfg.corpus, shard_ids=shards_for_rank(num_shards, rank, world))
        sampler_cls = CPSampler if cfg.objective == "cp" else MTBSampler
        sampler = sampler_cls(index, int(cfg.micro_batch_size), p_blank=cfg.p_blank, seed=cfg.seed,
                              rank=rank, world_size=world)
        net = ray.train.torch.prepare_model(PretrainNet(bundle.model))
        train_cfg = TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup,
                                max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16)
        optimizer = build_optimizer(net, train_cfg)
        scheduler = build_scheduler(optimizer, cfg.steps, train_cfg)
        start_step = 0
        if ckpt_dir:
            extra = load_train_state(ckpt_dir / TRAIN_STATE_DIR, optimizer=optimizer, scheduler=scheduler)
            if int(extra["world_size"]) != world:
                raise ReconError(f"{ckpt_dir}: saved with {extra['world_size']} workers, resumed with {world}; "
                                 "the sampler streams are per worker, so the worker count must match")
            start_step = int(extra["step"])
            sampler.load_state_dict(extra["samplers"][rank])
            set_rng_state(extra["rng"][rank])
    starts = _gather_objects(start_step)
    if len(set(starts)) != 1:  # e.g. nodes that do not share the run directory
        raise ReconError(f"workers would resume from different steps {starts}; is {run_dir} shared by all nodes?")

    tctx = TokenContext.for_bundle(bundle, cfg.max_length)
    settings = StepSettings(cfg.objective, cfg.temperature, cfg.mlm_weight, cfg.max_grad_norm, cfg.bf16,
                            gather_negatives=True)
    no_sync = getattr(net, "no_sync", None)
    encoder = getattr(net, "module", net).encoder
    logger = _MetricLogger(cfg.tracking_uri, run_id if rank == 0 else None)
    progress = (run_dir / PROGRESS_FILE).open("a", buffering=1) if rank == 0 else None
    net.train()
    for step in range(start_step + 1, cfg.steps + 1):
        _maybe_fail(cfg, step, rank, world)
        t0 = time.perf_counter()
        reseed_step(cfg.seed, step, rank)
        batches = [build_batch(sampler.next_batch(), index, cfg.objective, tctx,
                               mlm_probability=cfg.mlm_probability,
                               generator=step_generator(cfg.seed, step, rank, m))
                   for m in range(cfg.accum_steps)]
        stats = optimizer_step(net, batches, optimizer=optimizer, scheduler=scheduler, settings=settings,
                               device=device, no_sync=no_sync)
        local = stats.as_dict()
        local["seconds"] = time.perf_counter() - t0
        counts = ("sentences", "tokens", "truncated", "context_split", "entity_truncated")
        merged = _all_reduce_mean({k: local[k] for k in ("loss", "objective_loss", "mlm_loss", "accuracy",
                                                         "seconds", *counts)},
                                  sums=counts, device=device)
        metrics = {
            "loss": merged["loss"], f"{cfg.objective}_loss": merged["objective_loss"],
            "mlm_loss": merged["mlm_loss"], "contrastive_accuracy": merged["accuracy"],
            "sentences_per_s": merged["sentences"] / max(merged["seconds"], 1e-9),
            "lr": stats.lr, "grad_norm": stats.grad_norm,
            # sentences of this step windowed to max_length / with entities far apart / with an entity cut
            "truncated_sentences": merged["truncated"], "context_split_sentences": merged["context_split"],
            "entity_truncated_sentences": merged["entity_truncated"],
        }
        if rank == 0:
            if step % cfg.log_every == 0 or step == cfg.steps:
                logger.log(metrics, step)
            progress.write(json.dumps({"step": step, "resumed_from": start_step, **metrics}) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            states = _gather_objects({"sampler": sampler.state_dict(), "rng": rng_state()})
            report = {"step": step, **metrics}
            if rank == 0:
                with tempfile.TemporaryDirectory(prefix="recon-pretrain-") as tmp:
                    out = Path(tmp) / "ckpt"
                    save_checkpoint(out, encoder, bundle.tokenizer, special=bundle.special,
                                    base_encoder=cfg.encoder_name, objective=cfg.objective, step=step,
                                    extra={"pretrain_config": cfg.to_dict()})
                    save_train_state(out / TRAIN_STATE_DIR, optimizer=optimizer, scheduler=scheduler,
                                     extra={"step": step, "world_size": world,
                                            "samplers": [s["sampler"] for s in states],
                                            "rng": [s["rng"] for s in states]})
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(out)),
                                     checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{step:06d}")
            else:
                ray.train.report(report, checkpoint=None, checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{step:06d}")
    if progress is not None:
        progress.close()


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def _init_ray(cfg: PretrainRun) -> bool:
    """Join ``RAY_ADDRESS`` when set, else start a local Ray sized for the workers."""
    from .ray_session import ensure_ray

    return ensure_ray(num_cpus=max(2, math.ceil(cfg.num_workers * cfg.cpus_per_worker)))


def export_final(checkpoint_dir: Path, target: Path) -> Path:
    """Copy the encoder part of a training checkpoint (everything but ``train/``) to ``target``."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(checkpoint_dir, target, ignore=shutil.ignore_patterns(TRAIN_STATE_DIR))
    return target


def run_pretraining(cfg: PretrainRun) -> Path:
    """Run (or resume) pre-training on Ray Train; return the final recon checkpoint directory."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from recon.data_prep.corpus import read_manifest, require_exclusions

    read_manifest(cfg.corpus)  # fail here, not in every worker, when the corpus is missing
    leakage = require_exclusions(cfg.corpus, cfg.evaluate_on, allow_leakage=cfg.allow_leakage, data_dir=cfg.data_dir)
    cfg.corpus = str(Path(cfg.corpus).expanduser().resolve())
    cfg.tracking_uri = absolute_tracking_uri(cfg.tracking_uri)
    if cfg.fail_marker:
        cfg.fail_marker = str(Path(cfg.fail_marker).resolve())
    _check_resume(cfg)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=1))
    run_id = _mlflow_run(cfg)
    if not leakage.ok:  # allowed: say so where the run is read
        from mlflow.tracking import MlflowClient

        MlflowClient(cfg.tracking_uri).set_tag(run_id, "recon.leakage_allowed", ",".join(leakage.not_excluded))

    started = _init_ray(cfg)
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "mlflow_run_id": run_id},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=str(run_dir.parent),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    try:
        trainer.fit()
    except Exception as exc:
        client.set_terminated(run_id, status="FAILED")
        raise ReconError(f"pre-training failed after {cfg.max_failures} restart(s): {exc}") from exc
    finally:
        if started:
            ray.shutdown()
    latest = latest_checkpoint(run_dir)
    if latest is None or checkpoint_step(latest) != cfg.steps:
        client.set_terminated(run_id, status="FAILED")
        raise ReconError(f"pre-training ended without a checkpoint at step {cfg.steps} in {run_dir}")
    final = export_final(latest, run_dir / "final")
    client.log_artifacts(run_id, str(final), artifact_path="encoder")
    client.set_terminated(run_id, status="FINISHED")
    return final


def read_progress(run_dir: str | Path) -> list[dict]:
    """Rows of ``progress.jsonl``, the last attempt winning for steps that were redone after a restart."""
    path = Path(run_dir) / PROGRESS_FILE
    if not path.is_file():
        return []
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


__all__ = ["PretrainConfig", "PretrainRun", "run_pretraining", "train_loop_per_worker", "latest_checkpoint",
           "read_progress", "export_final", "absolute_tracking_uri"]
