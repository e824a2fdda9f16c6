"""The pre-training loop without Ray: ``run_steps(cfg, ...)`` yields each optimizer step's figures."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from recon.models.pretrain.batches import TokenContext, build_batch, step_generator
from recon.models.pretrain.config import PretrainConfig
from recon.models.pretrain.step import StepMeter, StepSettings, StepStats, _step_on_device, reseed_step


def run_steps(cfg: PretrainConfig, net: nn.Module, sampler, index, tctx: TokenContext, *, optimizer, scheduler,
              device: torch.device, rank: int = 0, start_step: int = 0, gather_negatives: bool = True, no_sync=None,
              before_step: Callable[[int], None] | None = None,
              read_at: Callable[[int], bool] | None = None) -> Iterator[tuple[int, StepStats | None]]:
    """The pre-training loop of ``cfg`` (its objective, steps, accumulation, seed, MLM share, loss settings
    and ``log_every``), without Ray: yields ``(step, stats)`` after each optimizer step.

    ``stats`` is read from the device only at the steps that need it -- every ``cfg.log_every`` steps,
    where ``read_at(step)`` is true (checkpoints), and at the last step -- and is then the mean over
    the steps since the previous read (:class:`StepMeter`); at the other steps it is None and nothing
    waits for the device, so on CUDA the host builds the next batch while the GPU computes this one.
    Time the caller spends between a read and the next step (evaluation, checkpoints) is left out of
    the next window's ``seconds``.

    The Ray Train worker (``recon.orchestration.pretrain.worker``) wraps it with the few things a
    cluster adds (metric all-reduce, reports, checkpoints); benchmarks and single-device runs call
    it as it is. Each step is a pure function of (seed, step, rank) and the sampler's position, so a
    run resumed at ``start_step`` repeats the uninterrupted run's batches exactly.
    """
    settings = StepSettings.of(cfg, gather_negatives)
    steps, accum = int(cfg.steps), cfg.accum_steps
    meter = StepMeter(device)
    pin = device.type == "cuda"
    for step in range(start_step + 1, steps + 1):
        if before_step is not None:
            before_step(step)
        reseed_step(cfg.seed, step, rank)
        batches = [build_batch(sampler.next_batch(), index, cfg.objective, tctx, mlm_probability=cfg.mlm_probability,
                               generator=step_generator(cfg.seed, step, rank, m))
                   for m in range(accum)]
        if pin:
            batches = [b.pin_memory() for b in batches]
        _step_on_device(net, batches, optimizer=optimizer, scheduler=scheduler, settings=settings, device=device,
                        meter=meter, step=step, no_sync=no_sync)
        read = step % cfg.log_every == 0 or step == steps or (read_at is not None and read_at(step))
        yield step, (meter.read() if read else None)
        if read:
            meter.restart()


__all__ = ["run_steps"]
