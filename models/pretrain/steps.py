"""One CP/MTB pre-training step: sampled pairs -> padded batch -> CP or MTB loss + MLM -> optimizer step.

    ctx = TokenContext.for_bundle(bundle, max_length=64)
    net = PretrainNet(bundle.model)                         # wrap THIS in DDP, not the encoder
    batches = [build_batch(sampler.next_batch(), index, "cp", ctx, generator=g) for _ in range(accum)]
    stats = optimizer_step(net, batches, optimizer=opt, scheduler=sched, settings=StepSettings("cp"))

Needs only torch + transformers (and the pure-Python ``data_prep`` renderer/encoder), so the same
step runs under Ray Train (``recon.orchestration.pretrain.driver``) and in a bare loop on a lone GPU
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

from recon.models.nets import objectives
from recon.models.pretrain.config import PretrainConfig
from recon.models.train.loop import autocast

_PAPER = PretrainConfig()  # the paper's loss settings (Appendix A): one home, read here

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
    truncation: str = "window"  # a protocol point: "cut" as the authors' pre-training code

    @classmethod
    def for_bundle(cls, bundle, max_length: int = 64, truncation: str = "window") -> "TokenContext":
        return cls(bundle.tokenizer, bundle.special,
                   WordPieceCache(bundle.tokenizer, bundle.special.all_tokens()), max_length, truncation=truncation)

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
        """Copy to ``device``; asynchronous (``non_blocking``) when the batch is in pinned memory."""
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return PretrainBatch(**moved)

    def pin_memory(self) -> "PretrainBatch":
        """Page-locked copy (CUDA only), so ``to(cuda)`` overlaps with the step already queued."""
        return PretrainBatch(**{k: (v.pin_memory() if isinstance(v, torch.Tensor) else v)
                                for k, v in self.__dict__.items()})

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
            enc = encode(rendered, ctx.pieces, ctx.max_length, ctx.truncation)
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


def rows_per_worker(rows: int) -> list[int] | None:
    """Every rank's row count (one tiny all-gather), or None outside torch.distributed.

    A CP batch can end short on one rank (the sampler ran out of unused sentences in every
    relation: ``pairs_skipped``), so ranks may hold different numbers of pairs.
    The counts are host integers, exchanged over gloo (a gloo group beside NCCL's, made once), so
    reading them never waits for the GPU's queue.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    group = None
    if dist.get_backend() != "gloo":
        world = id(dist.group.WORLD)
        if world not in _HOST_GROUP:  # every rank reaches its first CP step together: a collective call
            _HOST_GROUP.clear()
            _HOST_GROUP[world] = dist.new_group(backend="gloo")
        group = _HOST_GROUP[world]
    mine = torch.tensor([rows], dtype=torch.int64)
    counts = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, mine, group=group)
    return [int(c) for c in counts]


_HOST_GROUP: dict = {}  # default group's id -> the gloo group for host-side counts (NCCL runs)


def gather_across_workers(tensor: torch.Tensor, differentiable: bool = True,
                          sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order (identity outside torch.distributed).

    ``sizes`` are the ranks' row counts (:func:`rows_per_worker`); when they differ, each rank pads to
    the largest (collectives need equal shapes) and the padding is cut off after the gather.
    ``differentiable`` keeps the autograd graph through the gathered copies (their gradients are
    summed back onto each rank's rows).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    sizes = sizes if sizes is not None else rows_per_worker(tensor.size(0))
    longest = max(sizes)
    padded = tensor.contiguous()
    if tensor.size(0) < longest:
        filler = tensor.new_zeros((longest - tensor.size(0), *tensor.shape[1:]))
        padded = torch.cat([padded, filler], dim=0)
    if differentiable:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated alias, still the documented API
            parts = all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


def _split_pairs(t: torch.Tensor, n_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    return t[:n_pairs], t[n_pairs:]


def contrastive_reps(
    reps: torch.Tensor, relation_ids: torch.Tensor, n_pairs: int, gather: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder to the objective's layout (all firsts, then all seconds) over the GLOBAL batch.

    Each rank holds ``[a_0..a_{P-1}, b_0..b_{P-1}]``; after gathering, firsts of all ranks come
    before seconds of all ranks, so pair ``k`` of the global batch is ``(k, k + total pairs)``
    (ranks may hold different numbers of pairs).
    """
    a, b = _split_pairs(reps, n_pairs)
    ra, rb = _split_pairs(relation_ids, n_pairs)
    if gather:
        sizes = rows_per_worker(n_pairs)  # once per step: a rank's batch may have ended short
        a, b = gather_across_workers(a, sizes=sizes), gather_across_workers(b, sizes=sizes)
        ra, rb = gather_across_workers(ra, False, sizes), gather_across_workers(rb, False, sizes)
    return torch.cat([a, b]), torch.cat([ra, rb])


@dataclass(frozen=True)
class StepSettings:
    """Loss settings of one step; the defaults are ``PretrainConfig``'s (the paper's), read from there."""

    objective: Objective = "cp"
    temperature: float = _PAPER.temperature
    mlm_weight: float = _PAPER.mlm_weight
    max_grad_norm: float | None = _PAPER.max_grad_norm
    bf16: bool = _PAPER.bf16
    gather_negatives: bool = True


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


def _nearest_is_same(reps: torch.Tensor, relation_ids: torch.Tensor) -> torch.Tensor:
    """Per item, whether its most similar OTHER item (cosine) has the same relation, as a float
    tensor on the reps' device (``objectives.contrastive_accuracy`` without the host transfer)."""
    unit = torch.nn.functional.normalize(reps.float() if reps.dtype in (torch.float16, torch.bfloat16) else reps,
                                         dim=-1)
    sim = unit @ unit.T
    sim.fill_diagonal_(float("-inf"))
    labels = relation_ids.to(reps.device)
    return (labels[sim.argmax(dim=1)] == labels).float()


def cp_loss_nosync(reps: torch.Tensor, relation_ids: torch.Tensor, temperature: float = _PAPER.temperature
                   ) -> torch.Tensor:
    """``objectives.cp_loss`` without its two host synchronisations (``bool(positive.any())`` and
    ``nonzero``): the mean over positive pairs is a masked sum / count. Equal up to summation order
    (tested); used on CUDA, where a sync per micro-step would stall the queue."""
    unit = torch.nn.functional.normalize(reps.float() if reps.dtype in (torch.float16, torch.bfloat16) else reps,
                                         dim=-1)
    sim = unit @ unit.T / temperature
    labels = relation_ids.to(reps.device)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=reps.device)
    neg_lse = torch.logsumexp(sim.masked_fill(same, torch.finfo(sim.dtype).min), dim=1)
    neg_lse = neg_lse.masked_fill(same.all(dim=1), float("-inf"))
    losses = torch.logaddexp(sim, neg_lse[:, None]) - sim
    losses = torch.where(positive, losses, torch.zeros_like(losses))
    count = positive.sum()
    return losses.sum() / count.clamp(min=1) + reps.sum() * 0.0


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
        loss_fn = cp_loss_nosync if device.type == "cuda" else objectives.cp_loss
        obj = loss_fn(all_reps, all_ids, temperature=settings.temperature)
        with torch.no_grad():
            acc = _nearest_is_same(all_reps.detach(), all_ids).mean()
    else:
        a, b = _split_pairs(reps, batch.n_pairs)
        obj = objectives.mtb_loss(a, b, batch.targets)
        with torch.no_grad():
            acc = (((a * b).sum(-1) > 0).float() == batch.targets).float().mean()
    if any_masked:  # objectives.mlm_loss without its host-side "anything selected?" test
        mlm = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    else:  # nothing masked in this micro-batch: keep the head in the graph with a zero loss
        mlm = logits.float().sum() * 0.0
    loss = obj + settings.mlm_weight * mlm_share * mlm
    return loss, obj.detach(), mlm.detach(), acc.detach()


def masked_index(batch: PretrainBatch) -> torch.Tensor:
    """Flat indices (into ``[2P * L]``) of the MLM positions, computed on the host (CPU batch)."""
    return torch.nonzero((batch.mlm_labels != IGNORE_INDEX).reshape(-1), as_tuple=True)[0]


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
            with autocast(device, settings.bf16):
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
              before_step: Callable[[int], None] | None = None, log_every: int = 1,
              read_at: Callable[[int], bool] | None = None) -> Iterator[tuple[int, StepStats | None]]:
    """The pre-training loop, without Ray: yields ``(step, stats)`` after each optimizer step.

    ``stats`` is read from the device only at the steps that need it -- every ``log_every`` steps,
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
    meter = StepMeter(device)
    pin = device.type == "cuda"
    for step in range(start_step + 1, steps + 1):
        if before_step is not None:
            before_step(step)
        reseed_step(seed, step, rank)
        batches = [build_batch(sampler.next_batch(), index, objective, tctx, mlm_probability=mlm_probability,
                               generator=step_generator(seed, step, rank, m))
                   for m in range(accum_steps)]
        if pin:
            batches = [b.pin_memory() for b in batches]
        _step_on_device(net, batches, optimizer=optimizer, scheduler=scheduler, settings=settings, device=device,
                        meter=meter, step=step, no_sync=no_sync)
        read = step % log_every == 0 or step == steps or (read_at is not None and read_at(step))
        yield step, (meter.read() if read else None)
        if read:
            meter.restart()


# ---------------------------------------------------------------------------------------------
# Held-out evaluation: does the stage learn?
# ---------------------------------------------------------------------------------------------

HELDOUT_SALT = "recon-heldout-v1"


def heldout_score(tokens: Sequence[str]) -> float:
    """A sentence's place in [0, 1): a keyed hash of its token sequence, the same on every rank, in
    every run and for every seed (and for CP and MTB stages alike)."""
    text = "\x1f".join(tokens).encode("utf-8")
    digest = hashlib.blake2b(text, digest_size=8, key=HELDOUT_SALT.encode()).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def is_heldout(tokens: Sequence[str], fraction: float) -> bool:
    """Whether a sentence (token sequence) belongs to the held-out slice of share ``fraction``."""
    return fraction > 0 and heldout_score(tokens) < fraction


def split_heldout(index, fraction: float):
    """``(train, heldout)`` indexes of ``index``: every row of a held-out SENTENCE goes to ``heldout``.

    The decision is per token sequence (as ``CorpusIndex.text_ids`` counts sentences), so a sentence
    with several entity pairs or relations -- rows that may live in different shards, hence on
    different ranks -- is held out everywhere and never trained on, whichever rank loads it. Rows
    keep their shard, so a sampler partitions either index across ranks as it would the whole one.
    ``fraction == 0`` gives ``(index, None)``.
    """
    from recon.data_prep.corpus.index import CorpusIndex

    if fraction <= 0:
        return index, None
    flags = [is_heldout(ex.tokens, fraction) for ex in index.examples]

    def part(keep: bool):
        rows = [ex for ex, f in zip(index.examples, flags) if f == keep]
        return CorpusIndex(rows, num_shards=index.num_shards, shard_ids=index.shard_ids, manifest=index.manifest)

    return part(False), part(True)


def heldout_batches(index, objective: str, ctx: TokenContext, *, batches: int, pairs: int, p_blank: float,
                    seed: int, rank: int = 0, world_size: int = 1) -> list[PretrainBatch]:
    """A fixed set of up to ``batches`` evaluation batches of ``pairs`` pairs from the held-out index.

    Drawn once by the run's own sampler class (same blanking probability, rank partition and
    one-sentence-per-batch rule) from a dedicated seed, without MLM corruption; the same batches
    are scored at every checkpoint. A rank whose held-out rows cannot form a pair (small corpora)
    returns fewer batches or none; CP batches of fewer than 2 pairs are dropped (no negative).
    """
    from recon.core.errors import ReconError
    from recon.data_prep.samplers import CPSampler, MTBSampler

    if index is None or batches <= 0 or len(index) == 0:
        return []
    sampler_cls = CPSampler if objective == "cp" else MTBSampler
    try:
        sampler = sampler_cls(index, pairs, p_blank=p_blank, seed=seed, rank=rank, world_size=world_size)
    except ReconError:
        return []
    out: list[PretrainBatch] = []
    seen: set[tuple] = set()
    for b in range(batches):
        drawn = sampler.next_batch()
        key = tuple((p.a, p.b) for p in drawn)
        if len(drawn) < (2 if objective == "cp" else 1) or key in seen:
            continue
        seen.add(key)
        out.append(build_batch(drawn, index, objective, ctx, mlm_probability=0.0,
                               generator=step_generator(seed, -1, rank, b)))
    return out


@dataclass
class HeldoutScore:
    """Sums over the scored items, so workers can add theirs up before dividing.

    ``correct``: items scored right -- CP: sentences whose nearest other sentence in their batch
    (cosine of the relation representations) has the same relation, i.e. ``contrastive_accuracy``
    of training; MTB: pairs whose score sign matches the target. ``chance``: the expected number
    right by guessing -- CP: for each sentence, the share of the OTHER 2N - 1 sentences of its batch
    with its relation (exactly 1 / (2N - 1) when the batch's N relations are distinct, more when a
    relation is drawn twice); MTB: the majority class's count (a constant guess).
    """

    correct: float = 0.0
    items: float = 0.0
    chance: float = 0.0
    batches: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.items if self.items else float("nan")

    @property
    def chance_accuracy(self) -> float:
        return self.chance / self.items if self.items else float("nan")

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def evaluate_heldout(net: nn.Module, batches: Sequence[PretrainBatch], objective: str, *, device: torch.device,
                     bf16: bool = True) -> HeldoutScore:
    """Score ``batches`` with the model in eval mode under ``torch.inference_mode`` (no dropout, no
    graph); the model's train/eval mode is restored afterwards. Pass the bare module, not the DDP
    wrapper: DDP's forward may broadcast buffers, a collective the other ranks are not in."""
    net = getattr(net, "module", net)
    was_training = net.training
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    try:
        with torch.inference_mode():
            for host_batch in batches:
                batch = host_batch.to(device)
                no_mlm = torch.zeros(0, dtype=torch.long, device=device)  # no MLM position: head skipped
                with autocast(device, bf16):
                    reps, _ = net(batch.input_ids, batch.attention_mask, batch.head_pos, batch.tail_pos, no_mlm)
                reps = reps.float()
                if objective == "cp":
                    ids = batch.relation_ids
                    right = _nearest_is_same(reps, ids).sum()
                    m = ids.numel()
                    same_others = (ids[:, None] == ids[None, :]).sum(dim=1) - 1
                    chance = (same_others.double() / (m - 1)).sum()
                else:
                    a, b = _split_pairs(reps, batch.n_pairs)
                    right = (((a * b).sum(-1) > 0).float() == batch.targets).sum()
                    m = batch.n_pairs
                    positives = batch.targets.sum()
                    chance = torch.maximum(positives, m - positives)
                sums += torch.stack([right.double(), torch.tensor(float(m), dtype=torch.float64, device=device),
                                     chance.double(), torch.ones((), dtype=torch.float64, device=device)])
    finally:
        net.train(was_training)
    correct, items, chance, n = sums.tolist()
    return HeldoutScore(correct, items, chance, n)


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (tied embedding/decoder counted once), for FLOPs estimates."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


__all__ = [
    "OBJECTIVES", "TokenContext", "PretrainBatch", "PretrainNet", "StepSettings", "StepStats",
    "build_batch", "micro_step_loss", "optimizer_step", "gather_across_workers", "rows_per_worker", "contrastive_reps",
    "relation_id", "step_generator", "reseed_step", "count_parameters", "run_steps", "StepMeter",
    "masked_index", "cp_loss_nosync", "HeldoutScore", "heldout_score", "is_heldout",
    "split_heldout", "heldout_batches", "evaluate_heldout",
]
