"""Pre-training objectives: masked language modelling, CP (contrastive) and MTB (matching the blanks).

All functions are pure tensor code with no distributed logic: for CP with cross-worker negatives the
caller gathers the relation representations of every worker first and passes them in.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from recon.core.defaults import CP_TEMPERATURE

IGNORE_INDEX = -100


def mlm_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    protected: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: select ``prob`` of the eligible tokens; of those 80% [MASK], 10% random, 10% kept.

    Eligible = inside the attention mask, not a special id (pass ``tokenizer.all_special_ids`` so
    [CLS]/[SEP]/[PAD] are covered) and not ``protected`` (the entity START markers, whose hidden
    states are the relation representation). Returns ``(masked_ids, labels)`` with labels -100
    where nothing was selected. Random draws come from ``generator`` (on CPU unless given another
    device) so a seed reproduces the masking exactly on any device.
    """
    device = input_ids.device
    specials = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=input_ids.dtype, device=device)
    eligible = attention_mask.bool() & ~protected.to(device).bool() & ~torch.isin(input_ids, specials)
    gen_device = generator.device if generator is not None else device
    shape = input_ids.shape
    selected = (torch.rand(shape, generator=generator, device=gen_device).to(device) < prob) & eligible
    action = torch.rand(shape, generator=generator, device=gen_device).to(device)
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=gen_device).to(device)
    masked = input_ids.clone()
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids.to(input_ids.dtype)[to_random]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def start_marker_mask(input_ids: torch.Tensor, head_pos: torch.Tensor, tail_pos: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, L]`` mask of the head/tail START positions: the ``protected`` argument of ``mlm_mask``."""
    protected = torch.zeros_like(input_ids, dtype=torch.bool)
    rows = torch.arange(input_ids.size(0), device=input_ids.device)
    protected[rows, head_pos.to(input_ids.device)] = True
    protected[rows, tail_pos.to(input_ids.device)] = True
    return protected


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the selected tokens; 0 (with a graph) when none was selected."""
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), flat_labels, ignore_index=IGNORE_INDEX)


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision (autocast) inputs are computed in float32; float64 stays float64."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _cosine_matrix(reps: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(_upcast(reps), dim=-1)
    return unit @ unit.T


def cp_loss(reps: torch.Tensor, relation_ids: torch.Tensor, temperature: float = CP_TEMPERATURE, *,
            sync: bool = True) -> torch.Tensor:
    """NT-Xent over relation representations where every same-relation pair is a positive.

    For each ordered positive pair (a, p), a != p:
    ``-log(exp(s_ap/t) / (exp(s_ap/t) + sum_{n: y_n != y_a} exp(s_an/t)))`` with cosine ``s``,
    averaged over positive pairs (pytorch-metric-learning's ``NTXentLoss``). Computed with
    logsumexp so a temperature of 0.05 cannot overflow. 0 (with a graph) when there is no positive pair.

    ``sync=False`` computes the same mean as a masked sum / count, without the two host
    synchronisations (``positive.any()`` and ``nonzero``): equal up to summation order; the pre-training
    step uses it on CUDA, where a sync per micro-step would stall the queue.
    """
    if reps.dim() != 2 or relation_ids.shape != reps.shape[:1]:
        raise ValueError(f"reps must be [M, D] and relation_ids [M], got {tuple(reps.shape)} and "
                         f"{tuple(relation_ids.shape)}")
    sim = _cosine_matrix(reps) / temperature
    labels = relation_ids.to(reps.device)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=reps.device)
    # A finite fill keeps logsumexp's gradient finite; anchors without any negative get -inf after.
    neg_lse = torch.logsumexp(sim.masked_fill(same, torch.finfo(sim.dtype).min), dim=1)
    neg_lse = neg_lse.masked_fill(same.all(dim=1), float("-inf"))
    if not sync:
        losses = torch.logaddexp(sim, neg_lse[:, None]) - sim
        losses = torch.where(positive, losses, torch.zeros_like(losses))
        return losses.sum() / positive.sum().clamp(min=1) + reps.sum() * 0.0
    if not bool(positive.any()):
        return reps.sum() * 0.0
    anchor, pos = positive.nonzero(as_tuple=True)
    s_ap = sim[anchor, pos]
    losses = torch.logaddexp(s_ap, neg_lse[anchor]) - s_ap
    return losses.mean()


def nearest_is_same(reps: torch.Tensor, relation_ids: torch.Tensor) -> torch.Tensor:
    """Per item, whether its most similar OTHER item (cosine) has the same relation: a float tensor on the
    reps' device (no host transfer, so a training step can keep it on the device)."""
    sim = _cosine_matrix(reps)
    sim.fill_diagonal_(float("-inf"))
    labels = relation_ids.to(reps.device)
    return (labels[sim.argmax(dim=1)] == labels).float()


@torch.no_grad()
def contrastive_accuracy(reps: torch.Tensor, relation_ids: torch.Tensor) -> float:
    """Share of items whose most similar *other* item (cosine) has the same relation."""
    if reps.size(0) < 2:
        raise ValueError("contrastive_accuracy needs at least two representations")
    return float(nearest_is_same(reps, relation_ids).mean())


def mtb_loss(rep_a: torch.Tensor, rep_b: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Matching the blanks: ``BCEWithLogits(<rep_a, rep_b>, target)``; 1 = same entity pair."""
    scores = (_upcast(rep_a) * _upcast(rep_b)).sum(dim=-1)
    return F.binary_cross_entropy_with_logits(scores, targets.to(scores.device, scores.dtype))
