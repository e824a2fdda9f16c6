"""CNN relation classifier (Nguyen & Grishman, 2015): the paper's non-pre-trained baseline.

Each token is the concatenation of word, POS, NER and two relative-position embeddings (distance to
the head and to the tail representation position); one convolution (window 3, 230 filters), max
pooling over the sentence, dropout, and a linear layer. Inputs come from
``recon.data_prep.cnn_features.CNNFeaturizer``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# The paper's training settings (Appendix B); the training loop reads them, the model only uses hidden.
CNN_DEFAULTS = {"optimizer": "sgd", "lr": 0.5, "batch_size": 160, "hidden": 230}


@dataclass
class CNNConfig:
    vocab_size: int
    num_labels: int
    pos_vocab_size: int
    ner_vocab_size: int
    position_vocab_size: int
    word_dim: int = 50
    tag_dim: int = 10
    position_dim: int = 5
    hidden: int = CNN_DEFAULTS["hidden"]
    window: int = 3
    dropout: float = 0.5


class CNNClassifier(nn.Module):
    """``forward(word_ids, pos_ids, ner_ids, pos1, pos2, mask) -> logits [B, num_labels]``."""

    def __init__(self, config: CNNConfig, word_vectors: torch.Tensor | None = None) -> None:
        super().__init__()
        if word_vectors is not None:
            if word_vectors.shape[0] != config.vocab_size:
                raise ValueError(f"word_vectors has {word_vectors.shape[0]} rows for a vocabulary of "
                                 f"{config.vocab_size}")
            config.word_dim = int(word_vectors.shape[1])
        self.config = config
        self.word = nn.Embedding(config.vocab_size, config.word_dim, padding_idx=0)
        if word_vectors is not None:
            with torch.no_grad():
                self.word.weight.copy_(word_vectors)
        self.pos = nn.Embedding(config.pos_vocab_size, config.tag_dim, padding_idx=0)
        self.ner = nn.Embedding(config.ner_vocab_size, config.tag_dim, padding_idx=0)
        self.pos1 = nn.Embedding(config.position_vocab_size, config.position_dim, padding_idx=0)
        self.pos2 = nn.Embedding(config.position_vocab_size, config.position_dim, padding_idx=0)
        in_dim = config.word_dim + 2 * config.tag_dim + 2 * config.position_dim
        self.conv = nn.Conv1d(in_dim, config.hidden, kernel_size=config.window, padding=config.window // 2)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden, config.num_labels)

    def forward(self, word_ids: torch.Tensor, pos_ids: torch.Tensor, ner_ids: torch.Tensor,
                pos1: torch.Tensor, pos2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.word(word_ids), self.pos(pos_ids), self.ner(ner_ids),
                       self.pos1(pos1), self.pos2(pos2)], dim=-1)            # [B, L, E]
        h = torch.tanh(self.conv(x.transpose(1, 2)))                          # [B, H, L]
        h = h.masked_fill(~mask.bool()[:, None, :], float("-inf"))            # padding never wins the max
        pooled = h.max(dim=2).values                                          # [B, H]
        return self.classifier(self.dropout(pooled))
