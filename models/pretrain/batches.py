"""Sampled CP / MTB pairs -> one padded pre-training batch (C+M with each draw's blanking) with MLM masking.

Batch layout: for P pairs the batch holds 2P sentences, the P first members then the P second
members, so ``reps[:P]`` and ``reps[P:]`` line up pair by pair.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from recon.data_prep.encoding import WordPieceCache, encode
from recon.data_prep.formats import InputFormat, render
from recon.models.nets import objectives

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


def masked_index(batch: PretrainBatch) -> torch.Tensor:
    """Flat indices (into ``[2P * L]``) of the MLM positions, computed on the host (CPU batch)."""
    return torch.nonzero((batch.mlm_labels != IGNORE_INDEX).reshape(-1), as_tuple=True)[0]


def step_generator(seed: int, step: int, rank: int, micro: int) -> torch.Generator:
    """MLM masking randomness as a pure function of (seed, step, rank, micro-step): a resumed run
    masks exactly as the uninterrupted one would, with no generator state to carry."""
    mixed = int.from_bytes(hashlib.blake2b(f"{seed}/{step}/{rank}/{micro}".encode(), digest_size=8).digest(), "big")
    return torch.Generator().manual_seed(mixed >> 1)


__all__ = ["OBJECTIVES", "Objective", "IGNORE_INDEX", "relation_id", "TokenContext", "PretrainBatch", "build_batch",
           "masked_index", "step_generator"]
