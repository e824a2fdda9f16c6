"""The one Ray Train ``TorchTrainer`` of pre-training, for a study stage, ``recon pretrain`` and a sweep trial."""
from __future__ import annotations

from typing import Any

from recon.orchestration.pretrain.run import PretrainRun
from recon.orchestration.pretrain.worker import train_loop_per_worker


def build_trainer(cfg: PretrainRun, corpus: dict, encoder: Any):
    """A ``TorchTrainer`` running :func:`train_loop_per_worker` on ``cfg.num_workers`` workers (gloo, or NCCL
    with one GPU each), checkpointing into the run's folder in storage and restarting a failed worker
    group up to ``cfg.max_failures`` times."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": cfg.cpus_per_worker, **cfg.worker_resources}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(                                                              # [Ray Train]
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_uri": cfg.run_uri, "corpus": corpus, "encoder": encoder},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=cfg.storage_root,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )


__all__ = ["build_trainer"]
