"""One CP/MTB pre-training step: padded batches -> CP or MTB loss + MLM -> one optimizer step.

    ctx = TokenContext.for_bundle(bundle, max_length=64)
    net = PretrainNet(bundle.model)                         # wrap THIS in DDP, not the encoder
    batches = [build_batch(sampler.next_batch(), index, "cp", ctx, generator=g) for _ in range(accum)]
    stats = optimizer_step(net, batches, optimizer=opt, scheduler=sched, settings=StepSettings("cp"))

Needs only torch + transformers (and the pure-Python ``data_prep`` renderer/encoder), so the same
step runs under Ray Train (``recon.orchestration.pretrain.worker``) and in a bare loop on a lone GPU
(``bench/bench_pretrain.py``). CP across workers: ``recon.models.pretrain.distributed``.

MLM over accumulation: each micro-batch's MLM loss is weighted by its share of the step's masked
tokens, so an optimizer step over ``accum`` micro-batches equals one over their concatenation.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn

from recon.models.nets import objectives
from recon.models.pretrain.batches import IGNORE_INDEX, Objective, PretrainBatch, masked_index, step_generator
from recon.models.pretrain.config import PretrainConfig
from recon.models.pretrain.distributed import contrastive_reps, split_pairs
from recon.models.train.loop import autocast

_PAPER = PretrainConfig()  # the paper's loss settings (Appendix A): one home, read here


class PretrainNet(nn.Module):
    """Relation encoder + MLM head behind ONE ``forward``, so DistributedDataParallel sees the whole
    pre-training computation (calling ``encoder.encode`` and ``mlm_logits`` on a DDP-wrapped module
    would bypass DDP's forward and its gradient bookkeeping)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        if not getattr(encoder, "has_mlm_head", False):
            raise ValueError("pre-training needs an encoder loaded with mlm_head=True")
        self.encoder = encoder

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        head_pos: torch.Tensor,
        tail_pos: torch.Tensor,
        mlm_positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reps [B, 2H], mlm logits [K, V])`` for the K masked positions; projecting only those onto
        the vocabulary saves a [B, L, V] tensor. ``mlm_positions`` is a boolean ``[B, L]`` mask or the
        flat indices of its true entries (row-major, the same K rows in the same order); indices
        avoid the host synchronisation of boolean indexing on CUDA."""
        reps, seq = self.encoder.encode(input_ids, attention_mask, head_pos, tail_pos)
        if mlm_positions.dtype == torch.bool:
            picked = seq[mlm_positions]
        else:
            picked = seq.reshape(-1, seq.size(-1)).index_select(0, mlm_positions)
        return reps, self.encoder.mlm_logits(picked)


@dataclass(frozen=True)
class StepSettings:
    """Loss settings of one step; the defaults are ``PretrainConfig``'s (the paper's), read from there."""

    objective: Objective = "cp"
    temperature: float = _PAPER.temperature
    mlm_weight: float = _PAPER.mlm_weight
    max_grad_norm: float | None = _PAPER.max_grad_norm
    bf16: bool = _PAPER.bf16
    gather_negatives: bool = True
    cpu_bf16: bool = False  # a run passes its config's (StepSettings.of); bare use computes in float32

    @classmethod
    def of(cls, cfg: PretrainConfig, gather_negatives: bool = True) -> "StepSettings":
        """A run's loss settings, from its config."""
        return cls(cfg.objective, cfg.temperature, cfg.mlm_weight, cfg.max_grad_norm, cfg.bf16, gather_negatives,
                   cfg.cpu_bf16)


@dataclass
class StepStats:
    """Local (this worker's) figures of one optimizer step, or of a window of ``steps`` steps read
    from a :class:`StepMeter` (losses, accuracy, grad norm: mean per step; sentences, tokens and
    truncation counts: summed; ``seconds``: wall time). The Ray loop all-reduces them over workers."""

    loss: float
    objective_loss: float
    mlm_loss: float
    accuracy: float
    sentences: int
    tokens: int
    lr: float
    grad_norm: float
    seconds: float
    truncated: int = 0         # sentences of the step (all micro-batches) longer than max_length
    entity_truncated: int = 0  # ... of which an entity lost pieces (see recon.data_prep.encoding)
    context_split: int = 0     # ... of which the text between the entities was cut
    steps: int = 1             # optimizer steps these figures cover (losses: mean per step; counts: summed)
    cpu_seconds: float = float("nan")  # this process's CPU time over those steps (all its threads)

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def _micro_step(net: nn.Module, batch: PretrainBatch, settings: StepSettings, mlm_share: float,
                mlm_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``(loss, objective loss, MLM loss, accuracy)`` as tensors on the batch's device.

    ``mlm_index``: flat indices of the masked positions, computed on the host before the copy
    (:func:`masked_index`); with it nothing here waits for the device (boolean-mask indexing and an
    "is anything masked" test would each synchronise on CUDA). Without it, the boolean mask is used,
    which gives the same values.
    """
    device = batch.input_ids.device
    if mlm_index is None:
        positions = batch.mlm_labels != IGNORE_INDEX
        reps, logits = net(batch.input_ids, batch.attention_mask, batch.head_pos, batch.tail_pos, positions)
        targets = batch.mlm_labels[positions]
        any_masked = targets.numel() > 0
    else:
        reps, logits = net(batch.input_ids, batch.attention_mask, batch.head_pos, batch.tail_pos, mlm_index)
        targets = batch.mlm_labels.reshape(-1).index_select(0, mlm_index)
        any_masked = mlm_index.numel() > 0  # a shape: known on the host
    reps = reps.float()
    if settings.objective == "cp":
        all_reps, all_ids = contrastive_reps(reps, batch.relation_ids, batch.n_pairs, settings.gather_negatives)
        loss_fn = objectives.cp_loss
        obj = loss_fn(all_reps, all_ids, temperature=settings.temperature, sync=device.type != "cuda")
        with torch.no_grad():
            acc = objectives.nearest_is_same(all_reps.detach(), all_ids).mean()
    else:
        a, b = split_pairs(reps, batch.n_pairs)
        obj = objectives.mtb_loss(a, b, batch.targets)
        with torch.no_grad():
            acc = (((a * b).sum(-1) > 0).float() == batch.targets).float().mean()
    if any_masked:  # objectives.mlm_loss without its host-side "anything selected?" test
        mlm = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    else:  # nothing masked in this micro-batch: keep the head in the graph with a zero loss
        mlm = logits.float().sum() * 0.0
    loss = obj + settings.mlm_weight * mlm_share * mlm
    return loss, obj.detach(), mlm.detach(), acc.detach()


def micro_step_loss(
    net: nn.Module,
    batch: PretrainBatch,
    settings: StepSettings,
    mlm_share: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one micro-batch (already on the model's device). ``mlm_share`` = this micro-batch's
    fraction of the step's masked tokens (see the module docstring). Reads the parts back to the
    host; the training loop keeps them on the device instead (:class:`StepMeter`)."""
    loss, obj, mlm, acc = _micro_step(net, batch, settings, mlm_share)
    return loss, {"objective_loss": float(obj), "mlm_loss": float(mlm), "accuracy": float(acc)}


class StepMeter:
    """Step figures summed ON THE DEVICE and read back only when asked (every ``log_every`` steps).

    Each ``float(tensor)`` per micro-step is a host synchronisation that drains the CUDA queue; the
    meter keeps losses, accuracy, gradient norm and a non-finite-loss count as device tensors and
    reads them with one transfer. Host-side figures (sentences, tokens, truncation counts, lr) cost
    nothing and are kept as numbers. ``read`` returns the window's mean per step (counts summed)
    and its wall time, then starts a new window.
    """

    KEYS = ("loss", "objective_loss", "mlm_loss", "accuracy", "grad_norm", "nonfinite")

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.restart()

    def restart(self) -> None:
        """Empty the window and start its clock (also used to leave evaluation time out of it)."""
        self.sums = torch.zeros(len(self.KEYS), dtype=torch.float64, device=self.device)
        self.steps = 0
        self.counts = {"sentences": 0, "tokens": 0, "truncated": 0, "entity_truncated": 0, "context_split": 0}
        self.lr = float("nan")
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def add(self, step: int, parts: torch.Tensor, *, lr: float, batches: Sequence[PretrainBatch]) -> None:
        """``parts``: device tensor in ``KEYS`` order for one optimizer step."""
        self.sums += parts.to(torch.float64)
        self.steps += 1
        self.lr = lr
        self.first_step = step if self.first_step is None else self.first_step
        self.last_step = step
        for b in batches:
            self.counts["sentences"] += b.n_sentences
            self.counts["tokens"] += b.n_tokens
            self.counts["truncated"] += b.truncated
            self.counts["entity_truncated"] += b.entity_truncated
            self.counts["context_split"] += b.context_split

    def read(self) -> "StepStats":
        """The window's figures on the host (one synchronisation); raises on a non-finite loss."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        values = dict(zip(self.KEYS, self.sums.tolist()))  # the one device -> host transfer
        n = max(self.steps, 1)
        if values["nonfinite"] > 0:
            raise FloatingPointError(f"pre-training loss was not finite in {int(values['nonfinite'])} step(s) of "
                                     f"steps {self.first_step}..{self.last_step}")
        stats = StepStats(
            loss=values["loss"] / n, objective_loss=values["objective_loss"] / n, mlm_loss=values["mlm_loss"] / n,
            accuracy=values["accuracy"] / n, sentences=self.counts["sentences"], tokens=self.counts["tokens"],
            lr=self.lr, grad_norm=values["grad_norm"] / n, seconds=time.perf_counter() - self.start,
            truncated=self.counts["truncated"], entity_truncated=self.counts["entity_truncated"],
            context_split=self.counts["context_split"], steps=self.steps,
            cpu_seconds=time.process_time() - self.cpu_start,
        )
        self.restart()
        return stats


def _step_on_device(
    net: nn.Module,
    micro_batches: Sequence[PretrainBatch],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler,
    settings: StepSettings,
    device: torch.device,
    meter: StepMeter,
    step: int,
    no_sync: Callable[[], ContextManager] | None = None,
) -> None:
    """One optimizer step whose figures stay on the device, added to ``meter`` (no host sync)."""
    net.train()  # from_pretrained hands models back in eval mode: pre-training wants dropout on
    total_masked = sum(b.n_masked for b in micro_batches)  # host batches: free
    n = len(micro_batches)
    cuda = device.type == "cuda"
    # float64 like the Python floats they replace: the figures equal the old per-micro-step reads
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, objective loss, MLM loss, accuracy
    nonfinite = torch.zeros((), dtype=torch.float64, device=device)
    for i, host_batch in enumerate(micro_batches):
        share = n * host_batch.n_masked / total_masked if total_masked else 1.0
        index = None
        if cuda:
            index = masked_index(host_batch)
            index = index.pin_memory().to(device, non_blocking=True)
        batch = host_batch.to(device)
        sync = contextlib.nullcontext() if (no_sync is None or i == n - 1) else no_sync()
        with sync:
            with autocast(device, settings.bf16, settings.cpu_bf16):
                loss, obj, mlm, acc = _micro_step(net, batch, settings, share, index)
            (loss / n).backward()
        obj, mlm, acc = obj.double(), mlm.double(), acc.double()
        sums += torch.stack([obj + settings.mlm_weight * mlm, obj, mlm, acc])
        nonfinite += (~torch.isfinite(loss.detach())).double()
    if settings.max_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), settings.max_grad_norm).detach()
    else:
        grad_norm = torch.full((), float("nan"), device=device)
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    parts = torch.cat([sums / n, grad_norm.to(device=device, dtype=sums.dtype).reshape(1), nonfinite.reshape(1)])
    meter.add(step, parts, lr=lr, batches=micro_batches)


def optimizer_step(
    net: nn.Module,
    micro_batches: Sequence[PretrainBatch],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler,
    settings: StepSettings,
    device: torch.device | None = None,
    no_sync: Callable[[], ContextManager] | None = None,
) -> StepStats:
    """Forward/backward over ``micro_batches`` (gradient accumulation), clip, step, schedule, and
    read the step's figures back (one host synchronisation; :func:`run_steps` reads less often).

    ``no_sync`` is DDP's ``model.no_sync``: it skips the gradient all-reduce on every micro-batch
    but the last. Losses are averaged over micro-batches; MLM is weighted by masked-token share.
    A non-finite loss raises ``FloatingPointError`` when the figures are read (here: after the step).
    """
    device = device or next(net.parameters()).device
    meter = StepMeter(device)
    _step_on_device(net, micro_batches, optimizer=optimizer, scheduler=scheduler, settings=settings,
                    device=device, meter=meter, step=0, no_sync=no_sync)
    return meter.read()


def reseed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch's global generator (dropout) per optimizer step: a resumed run drops out as the
    uninterrupted one would."""
    torch.manual_seed(step_generator(seed, step, rank, -1).initial_seed())


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (tied embedding/decoder counted once), for FLOPs estimates."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


__all__ = ["PretrainNet", "StepSettings", "StepStats", "StepMeter", "micro_step_loss", "optimizer_step",
           "reseed_step", "count_parameters"]
