"""Relation classifier: the encoder's [head ; tail] start-marker vector followed by one linear layer.

This is the paper's supervised model (Section 2.2): no pooler and no hidden layer, so what the
encoder learned in pre-training is what the classifier sees. Its dropout and initialisation are
protocol points (``recon.core.protocol``): the authors' code has no dropout and keeps
``nn.Linear``'s default initialisation; recon's default is BERT's (dropout 0.1, N(0, 0.02), zero bias).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from recon.core.config import Config, knob
from recon.core.protocol import POINTS, point_default

from recon.models.nets.encoder import RelationEncoder

HEAD_INITS = ("normal", "torch")


@dataclass
class HeadOptions(Config):
    """The linear classifier on the relation representation."""

    dropout: float = knob(point_default("head_dropout"), POINTS["head_dropout"].help, ge=0, lt=1,
                          point="head_dropout")
    init: Literal["normal", "torch"] = knob(point_default("head_init"), POINTS["head_init"].help,
                                            choices=HEAD_INITS, point="head_init")


class RelationClassifier(nn.Module):
    """``logits = W · dropout([h_head ; h_tail]) + b`` over ``num_labels`` relations."""

    def __init__(self, encoder: RelationEncoder, num_labels: int, dropout: float = HeadOptions().dropout,
                 init: str = HeadOptions().init) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        if init not in HEAD_INITS:
            raise ValueError(f"init must be one of {HEAD_INITS}, got {init!r}")
        self.encoder = encoder
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.rep_size, num_labels)  # "torch": nn.Linear's own initialisation
        if init == "normal":
            nn.init.normal_(self.classifier.weight, std=0.02)  # BERT's initializer_range
            nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_options(cls, encoder: RelationEncoder, num_labels: int, options: HeadOptions) -> "RelationClassifier":
        return cls(encoder, num_labels, dropout=options.dropout, init=options.init)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        head_pos: torch.Tensor,
        tail_pos: torch.Tensor,
    ) -> torch.Tensor:
        rep = self.encoder(input_ids, attention_mask, head_pos, tail_pos)
        return self.classifier(self.dropout(rep))
