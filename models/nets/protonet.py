"""Prototypical networks for few-shot relation classification (FewRel N-way K-shot).

The paper scores a query against each class prototype with a DOT PRODUCT of relation
representations rather than Snell et al.'s Euclidean distance; both are offered.
"""
from __future__ import annotations

from typing import Literal

import torch

Metric = Literal["dot", "euclidean"]


def prototypes(support: torch.Tensor) -> torch.Tensor:
    """Class prototypes ``[N, D]``: the mean of each relation's K support representations ``[N, K, D]``."""
    if support.dim() != 3:
        raise ValueError(f"support must be [N, K, D], got {tuple(support.shape)}")
    return support.mean(dim=1)


def proto_logits(query: torch.Tensor, protos: torch.Tensor, metric: Metric = "dot") -> torch.Tensor:
    """Logits ``[Q, N]``: ``q·p`` (``dot``) or ``-||q - p||²`` (``euclidean``)."""
    if query.dim() != 2 or protos.dim() != 2 or query.size(1) != protos.size(1):
        raise ValueError(f"query must be [Q, D] and protos [N, D], got {tuple(query.shape)}, {tuple(protos.shape)}")
    if metric == "dot":
        return query @ protos.T
    if metric == "euclidean":
        # Expanded form avoids a [Q, N, D] intermediate; clamp guards tiny negative round-off.
        sq = (query * query).sum(-1, keepdim=True) - 2 * query @ protos.T + (protos * protos).sum(-1)[None, :]
        return -sq.clamp_min(0)
    raise ValueError(f"metric must be 'dot' or 'euclidean', got {metric!r}")
