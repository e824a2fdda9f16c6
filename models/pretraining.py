"""One CP/MTB pre-training step: sampled pairs -> padded batch -> CP or MTB loss + MLM -> optimizer step.

    ctx = TokenContext.for_bundle(bundle, max_length=64)
    net = PretrainNet(bundle.model)                         # wrap THIS in DDP, not the encoder
    batches = [build_batch(sampler.next_batch(), index, "cp", ctx, generator=g) for _ in range(accum)]
    stats = optimizer_step(net, batches, optimizer=opt, scheduler=sched, settings=StepSettings("cp"))

Needs only torch + transformers (and the pure-Python ``data_prep`` renderer/encoder), so the same
step runs under Ray Train (``recon.orchestration.pretrain``) and in a bare loop on a lone GPU
(``bench/bench_pretrain.py``).

Batch layout: for P pairs the batch holds 2P sentences, the P first members then the P second
members, so ``reps[:P]`` and ``reps[P:]`` line up pair by pair.

CP across workers and micro-steps: with ``gather_negatives`` the relation representations of every
worker's micro-batch are all-gathered with a differentiable all-gather before the InfoNCE loss, so
each sentence is contrasted with the ``workers x micro_batch`` pairs of that micro-step (the
"global micro-batch"); gradient accumulation then averages ``accum`` such losses. The contrastive
batch is therefore ``workers x micro_batch`` pairs, and equals the paper's batch only when
``accum == 1``. The loss is computed identically on every rank; the all-gather's backward sums the
ranks' gradients and DDP averages them, which together give exactly the gradient of that one loss.
MTB scores pairs independently, so it needs no gathering.

MLM over accumulation: each micro-batch's MLM loss is weighted by its share of the step's masked
tokens, so an optimizer step over ``accum`` micro-batches equals one over their concatenation.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Literal, Sequence

import torch
from torch import nn

from recon.data_prep.encoding import WordPieceCache, encode
from recon.data_prep.formats import InputFormat, render

from . import objectives
from .training import autocast

Objective = Literal["cp", "mtb"]
OBJECTIVES: tuple[str, ...] = ("cp", "mtb")
IGNORE_INDEX = -100


def relation_id(relation: str) -> int:
    """A stable 63-bit id for a relation name, identical on every worker without a shared vocabulary.

    CP only needs "same relation or not" across workers; a keyed hash avoids shipping a relation
    table around (collision odds for 744 relations are ~1e-14).
    """
    return int.from_bytes(hashlib.blake2b(relation.encode("utf-8"), digest_size=8).digest(), "big") >> 1


@dataclass
class TokenContext:
    """What building a batch needs from the encoder: tokenizer ids, marker tokens, word-piece cache."""

    tokenizer: object
    special: object
    pieces: WordPieceCache
    max_length: int = 64
    fmt: InputFormat = InputFormat.CM

    @classmethod
    def for_bundle(cls, bundle, max_length: int = 64) -> "TokenContext":
        return cls(bundle.tokenizer, bundle.special,
                   WordPieceCache(bundle.tokenizer, bundle.special.all_tokens()), max_length)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def mask_id(self) -> int:
        return int(self.tokenizer.mask_token_id)

    @property
    def vocab_size(self) -> int:
        """Random MLM replacements come from the base vocabulary, never from added marker tokens."""
        return int(self.tokenizer.vocab_size)

    def protected_ids(self) -> list[int]:
        """Never masked: [CLS], [SEP], padding, and every marker/blank token (start markers above all:
        the relation representation is read there)."""
        s = self.special
        markers = [s.head_start, s.head_end, s.tail_start, s.tail_end, s.head_blank, s.tail_blank]
        tok = self.tokenizer
        return sorted({tok.cls_token_id, tok.sep_token_id, tok.pad_token_id,
                       *tok.convert_tokens_to_ids(markers)})


@dataclass
class PretrainBatch:
    """2P sentences (firsts then seconds) with MLM inputs/labels and the pair-level targets."""

    input_ids: torch.Tensor       # [2P, L] with MLM corruption applied
    attention_mask: torch.Tensor  # [2P, L]
    head_pos: torch.Tensor        # [2P]
    tail_pos: torch.Tensor        # [2P]
    mlm_labels: torch.Tensor      # [2P, L], IGNORE_INDEX where not predicted
    relation_ids: torch.Tensor    # [2P] CP: relation id of each sentence (int64)
    targets: torch.Tensor         # [P]  MTB: 1 same entity pair, 0 otherwise (float)
    n_pairs: int
    truncated: int = 0         # sentences longer than max_length (windowed around the entities)
    entity_truncated: int = 0  # sentences where an entity lost pieces (its end marker at least)
    context_split: int = 0     # sentences whose entities were further apart than max_length

    def to(self, device: torch.device) -> "PretrainBatch":
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return PretrainBatch(**moved)

    @property
    def n_sentences(self) -> int:
        return int(self.input_ids.size(0))

    @property
    def n_tokens(self) -> int:
        """Positions the encoder computes (padding included: that is what costs FLOPs)."""
        return int(self.input_ids.numel())

    @property
    def n_masked(self) -> int:
        return int((self.mlm_labels != IGNORE_INDEX).sum())


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def build_batch(
    pairs: Sequence,
    index,
    objective: Objective,
    ctx: TokenContext,
    *,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> PretrainBatch:
    """Render (C+M, with each draw's blanking) and encode the sampled pairs, then apply MLM masking.

    ``pairs`` are ``recon.data_prep.samplers.CPPair``/``MTBPair`` (anything with ``.a``/``.b`` draws and
    ``.relation`` or ``.target``); ``index`` maps a draw's ``.index`` to a corpus example.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not pairs:
        raise ValueError("cannot build a batch from zero pairs")
    rows, heads, tails = [], [], []
    counts = {"truncated": 0, "entity_truncated": 0, "context_split": 0}
    for side in ("a", "b"):
        for pair in pairs:
            draw = getattr(pair, side)
            example = index[draw.index].to_relation_example()
            rendered = render(example, ctx.fmt, ctx.special, blank_head=draw.blank_head, blank_tail=draw.blank_tail)
            enc = encode(rendered, ctx.pieces, ctx.max_length)
            rows.append(enc.input_ids)
            heads.append(enc.head_pos)
            tails.append(enc.tail_pos)
            for key in counts:
                counts[key] += int(getattr(enc, key))
    input_ids, attention_mask = _pad(rows, ctx.pad_id)
    head_pos, tail_pos = torch.tensor(heads), torch.tensor(tails)
    protected = torch.isin(input_ids, torch.tensor(ctx.protected_ids(), dtype=torch.long))
    protected |= objectives.start_marker_mask(input_ids, head_pos, tail_pos)
    masked_ids, labels = objectives.mlm_mask(
        input_ids, attention_mask, protected, mask_token_id=ctx.mask_id, vocab_size=ctx.vocab_size,
        special_ids=ctx.tokenizer.all_special_ids, prob=mlm_probability, generator=generator,
    )
    if objective == "cp":
        rel = torch.tensor([relation_id(p.relation) for p in pairs], dtype=torch.long)
        relation_ids, targets = torch.cat([rel, rel]), torch.zeros(len(pairs))
    else:
        relation_ids = torch.zeros(2 * len(pairs), dtype=torch.long)
        targets = torch.tensor([float(p.target) for p in pairs])
    return PretrainBatch(masked_ids, attention_mask, head_pos, tail_pos, labels,
                         relation_ids, targets, len(pairs), **counts)


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
        """``(reps [B, 2H], mlm logits [K, V])`` for the K positions where ``mlm_positions`` is true;
        projecting only those onto the vocabulary saves a [B, L, V] tensor."""
        reps, seq = self.encoder.encode(input_ids, attention_mask, head_pos, tail_pos)
        return reps, self.encoder.mlm_logits(seq[mlm_positions])


def gather_across_workers(tensor: torch.Tensor, differentiable: bool = True) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (identity outside torch.distributed).

    Ranks must hold the same number of rows; ``differentiable`` keeps the autograd graph through the
    gathered copies (their gradients are summed back onto each rank's rows).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    if differentiable:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated alias, still the documented API
            return torch.cat(all_gather(tensor.contiguous()), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def _split_pairs(t: torch.Tensor, n_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    return t[:n_pairs], t[n_pairs:]


def contrastive_reps(
    reps: torch.Tensor, relation_ids: torch.Tensor, n_pairs: int, gather: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder to the objective's layout (all firsts, then all seconds) over the GLOBAL batch.

    Each rank holds ``[a_0..a_{P-1}, b_0..b_{P-1}]``; after gathering, firsts of all ranks come
    before seconds of all ranks, so pair ``k`` of the global batch is ``(k, k + world x P)``.
    """
    a, b = _split_pairs(reps, n_pairs)
    ra, rb = _split_pairs(relation_ids, n_pairs)
    if gather:
        a, b = gather_across_workers(a), gather_across_workers(b)
        ra, rb = gather_across_workers(ra, False), gather_across_workers(rb, False)
    return torch.cat([a, b]), torch.cat([ra, rb])


@dataclass(frozen=True)
class StepSettings:
    """Loss settings of one step (paper defaults: temperature 0.05, MLM weight 1, clip 1.0)."""

    objective: Objective = "cp"
    temperature: float = 0.05
    mlm_weight: float = 1.0
    max_grad_norm: float | None = 1.0
    bf16: bool = True
    gather_negatives: bool = True


@dataclass
class StepStats:
    """Local (this worker's) figures of one optimizer step; the Ray loop averages them over workers."""

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

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def micro_step_loss(
    net: nn.Module,
    batch: PretrainBatch,
    settings: StepSettings,
    mlm_share: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one micro-batch (already on the model's device). ``mlm_share`` = this micro-batch's
    fraction of the step's masked tokens (see the module docstring)."""
    positions = batch.mlm_labels != IGNORE_INDEX
    reps, logits = net(batch.input_ids, batch.attention_mask, batch.head_pos, batch.tail_pos, positions)
    reps = reps.float()
    if settings.objective == "cp":
        all_reps, all_ids = contrastive_reps(reps, batch.relation_ids, batch.n_pairs, settings.gather_negatives)
        obj = objectives.cp_loss(all_reps, all_ids, temperature=settings.temperature)
        with torch.no_grad():
            acc = float(objectives.contrastive_accuracy(all_reps.detach(), all_ids))
    else:
        a, b = _split_pairs(reps, batch.n_pairs)
        obj = objectives.mtb_loss(a, b, batch.targets)
        with torch.no_grad():
            acc = float((((a * b).sum(-1) > 0).float() == batch.targets).float().mean())
    if logits.size(0) > 0:
        mlm = objectives.mlm_loss(logits.float(), batch.mlm_labels[positions])
    else:  # nothing masked in this micro-batch: keep the head in the graph with a zero loss
        mlm = logits.float().sum() * 0.0
    loss = obj + settings.mlm_weight * mlm_share * mlm
    return loss, {"objective_loss": float(obj.detach()), "mlm_loss": float(mlm.detach()), "accuracy": acc}


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
    """Forward/backward over ``micro_batches`` (gradient accumulation), clip, step, schedule.

    ``no_sync`` is DDP's ``model.no_sync``: it skips the gradient all-reduce on every micro-batch
    but the last. Losses are averaged over micro-batches; MLM is weighted by masked-token share.
    """
    start = time.perf_counter()
    device = device or next(net.parameters()).device
    net.train()  # from_pretrained hands models back in eval mode: pre-training wants dropout on
    total_masked = sum(b.n_masked for b in micro_batches)
    n = len(micro_batches)
    sums = {"loss": 0.0, "objective_loss": 0.0, "mlm_loss": 0.0, "accuracy": 0.0}
    for i, batch in enumerate(micro_batches):
        batch = batch.to(device)
        share = n * batch.n_masked / total_masked if total_masked else 1.0
        sync = contextlib.nullcontext() if (no_sync is None or i == n - 1) else no_sync()
        with sync:
            with autocast(device, settings.bf16):
                loss, parts = micro_step_loss(net, batch, settings, share)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"pre-training loss is {value} on micro-batch {i}")
            (loss / n).backward()
        sums["loss"] += parts["objective_loss"] + settings.mlm_weight * parts["mlm_loss"]
        for key in ("objective_loss", "mlm_loss", "accuracy"):
            sums[key] += parts[key]
    grad_norm = float("nan")
    if settings.max_grad_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), settings.max_grad_norm))
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return StepStats(
        loss=sums["loss"] / n, objective_loss=sums["objective_loss"] / n, mlm_loss=sums["mlm_loss"] / n,
        accuracy=sums["accuracy"] / n, sentences=sum(b.n_sentences for b in micro_batches),
        tokens=sum(b.n_tokens for b in micro_batches), lr=lr, grad_norm=grad_norm,
        seconds=time.perf_counter() - start,
        truncated=sum(b.truncated for b in micro_batches),
        entity_truncated=sum(b.entity_truncated for b in micro_batches),
        context_split=sum(b.context_split for b in micro_batches),
    )


def step_generator(seed: int, step: int, rank: int, micro: int) -> torch.Generator:
    """MLM masking randomness as a pure function of (seed, step, rank, micro-step): a resumed run
    masks exactly as the uninterrupted one would, with no generator state to carry."""
    mixed = int.from_bytes(hashlib.blake2b(f"{seed}/{step}/{rank}/{micro}".encode(), digest_size=8).digest(), "big")
    return torch.Generator().manual_seed(mixed >> 1)


def reseed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch's global generator (dropout) per optimizer step, for the same reason."""
    torch.manual_seed(step_generator(seed, step, rank, -1).initial_seed())


def run_steps(net: nn.Module, sampler, index, objective: str, tctx: TokenContext, *, steps: int, start_step: int,
              accum_steps: int, seed: int, rank: int, mlm_probability: float, optimizer, scheduler,
              settings: StepSettings, device: torch.device, no_sync=None,
              before_step: Callable[[int], None] | None = None) -> Iterator[tuple[int, StepStats]]:
    """The pre-training loop, without Ray: yields ``(step, stats)`` after each optimizer step.

    The Ray Train worker (``recon.orchestration.pretrain_worker``) wraps it with the few things a
    cluster adds (metric all-reduce, reports, checkpoints); benchmarks and single-device runs call
    it as it is. Each step is a pure function of (seed, step, rank) and the sampler's position, so a
    run resumed at ``start_step`` repeats the uninterrupted run's batches exactly.
    """
    for step in range(start_step + 1, steps + 1):
        if before_step is not None:
            before_step(step)
        reseed_step(seed, step, rank)
        batches = [build_batch(sampler.next_batch(), index, objective, tctx, mlm_probability=mlm_probability,
                               generator=step_generator(seed, step, rank, m))
                   for m in range(accum_steps)]
        stats = optimizer_step(net, batches, optimizer=optimizer, scheduler=scheduler, settings=settings,
                               device=device, no_sync=no_sync)
        yield step, stats


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (tied embedding/decoder counted once), for FLOPs estimates."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


__all__ = [
    "OBJECTIVES", "TokenContext", "PretrainBatch", "PretrainNet", "StepSettings", "StepStats",
    "build_batch", "micro_step_loss", "optimizer_step", "gather_across_workers", "contrastive_reps",
    "relation_id", "step_generator", "reseed_step", "count_parameters", "run_steps",
]
