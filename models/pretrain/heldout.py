"""Held-out evaluation: does a pre-training stage learn? Sentences held out by a keyed hash, fixed batches
scored at every checkpoint, and chance for comparison."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from recon.models.nets.objectives import nearest_is_same
from recon.models.pretrain.batches import PretrainBatch, TokenContext, build_batch, step_generator
from recon.models.pretrain.distributed import split_pairs
from recon.models.train.loop import autocast

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
                     bf16: bool = True, cpu_bf16: bool = False) -> HeldoutScore:
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
                with autocast(device, bf16, cpu_bf16):
                    reps, _ = net(batch.input_ids, batch.attention_mask, batch.head_pos, batch.tail_pos, no_mlm)
                reps = reps.float()
                if objective == "cp":
                    ids = batch.relation_ids
                    right = nearest_is_same(reps, ids).sum()
                    m = ids.numel()
                    same_others = (ids[:, None] == ids[None, :]).sum(dim=1) - 1
                    chance = (same_others.double() / (m - 1)).sum()
                else:
                    a, b = split_pairs(reps, batch.n_pairs)
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


__all__ = ["HELDOUT_SALT", "heldout_score", "is_heldout", "split_heldout", "heldout_batches", "HeldoutScore",
           "evaluate_heldout"]
