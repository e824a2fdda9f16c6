"""Relation classifier: the encoder's [head ; tail] start-marker vector followed by one linear layer.

This is the paper's supervised model (Section 2.2): no pooler and no hidden layer, so what the
encoder learned in pre-training is what the classifier sees.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoder import RelationEncoder


class RelationClassifier(nn.Module):
    """``logits = W · dropout([h_head ; h_tail]) + b`` over ``num_labels`` relations."""

    def __init__(self, encoder: RelationEncoder, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.encoder = encoder
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.rep_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)  # BERT's initializer_range
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        head_pos: torch.Tensor,
        tail_pos: torch.Tensor,
    ) -> torch.Tensor:
        rep = self.encoder(input_ids, attention_mask, head_pos, tail_pos)
        return self.classifier(self.dropout(rep))
