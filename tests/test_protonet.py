"""Prototypes and prototype logits against values computed by hand."""
from __future__ import annotations

import pytest
import torch

from recon.models.nets.protonet import proto_logits, prototypes


def test_prototypes_are_class_means():
    support = torch.tensor([[[1.0, 2.0], [3.0, 4.0]],      # relation 0: mean (2, 3)
                            [[0.0, -1.0], [2.0, 1.0]],     # relation 1: mean (1, 0)
                            [[5.0, 5.0], [-5.0, 1.0]]])    # relation 2: mean (0, 3)
    assert torch.equal(prototypes(support), torch.tensor([[2.0, 3.0], [1.0, 0.0], [0.0, 3.0]]))
    with pytest.raises(ValueError):
        prototypes(support[0])


def test_dot_and_euclidean_logits_by_hand():
    protos = torch.tensor([[2.0, 3.0], [1.0, 0.0], [0.0, 3.0]])
    query = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    # dot: q0 -> 5, 1, 3 ; q1 -> -6, 0, -6
    assert torch.equal(proto_logits(query, protos), torch.tensor([[5.0, 1.0, 3.0], [-6.0, 0.0, -6.0]]))
    # euclidean: -|q-p|^2: q0 -> -(1+4), -(0+1), -(1+4) ; q1 -> -(4+25), -(1+4), -(0+25)
    eu = proto_logits(query, protos, metric="euclidean")
    assert torch.allclose(eu, torch.tensor([[-5.0, -1.0, -5.0], [-29.0, -5.0, -25.0]]))
    # the two metrics disagree here, which is why the choice matters: q0 picks 0 vs 1
    assert proto_logits(query, protos).argmax(1).tolist() == [0, 1]
    assert eu.argmax(1).tolist() == [1, 1]
    with pytest.raises(ValueError):
        proto_logits(query, protos, metric="cosine")


def test_logits_backpropagate_to_support_and_query():
    support = torch.randn(5, 3, 8, requires_grad=True)
    query = torch.randn(4, 8, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(proto_logits(query, prototypes(support)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert support.grad.abs().sum() > 0 and query.grad.abs().sum() > 0
