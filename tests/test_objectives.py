"""CP / MTB / MLM objectives against values computed by hand, and the MLM masking rules."""
from __future__ import annotations

import math

import pytest
import torch

from recon.models.nets.objectives import (
    contrastive_accuracy, cp_loss, mlm_loss, mlm_mask, mtb_loss, start_marker_mask,
)

REPS = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]]


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / (math.hypot(*u) * math.hypot(*v))


def _nt_xent_by_hand(reps, labels, t):
    """Loop over ordered positive pairs exactly as the definition reads."""
    losses = []
    for a in range(len(reps)):
        for p in range(len(reps)):
            if p == a or labels[p] != labels[a]:
                continue
            pos = math.exp(_cos(reps[a], reps[p]) / t)
            neg = sum(math.exp(_cos(reps[a], reps[n]) / t) for n in range(len(reps)) if labels[n] != labels[a])
            losses.append(-math.log(pos / (pos + neg)))
    return sum(losses) / len(losses)


def test_cp_loss_two_relations_by_hand():
    # cos(0,1)=0.8, cos(2,3)=0.8, cos(0,2)=0, cos(0,3)=-0.6, cos(1,2)=0.6, cos(1,3)=0
    # anchor 0 (positive 1): -log(e^{1.6} / (e^{1.6} + e^{0} + e^{-1.2}))  at t=0.5
    # anchors 0 and 3 share this value by symmetry; anchors 1 and 2 see negatives at 0.6 and 0
    anchor0 = -math.log(math.exp(1.6) / (math.exp(1.6) + 1 + math.exp(-1.2)))
    anchor1 = -math.log(math.exp(1.6) / (math.exp(1.6) + math.exp(1.2) + 1))
    reps = torch.tensor(REPS)
    labels = torch.tensor([7, 7, 3, 3])
    loss = cp_loss(reps, labels, temperature=0.5)
    expected = (anchor0 + anchor1) / 2
    assert expected == pytest.approx(_nt_xent_by_hand(REPS, [7, 7, 3, 3], 0.5), rel=1e-12)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # scaling a vector does not change cosine similarity
    assert cp_loss(reps * torch.tensor([[3.0], [1.0], [0.5], [2.0]]), labels, 0.5).item() == \
        pytest.approx(expected, rel=1e-6)


def test_cp_loss_every_same_relation_pair_is_positive():
    reps = [[1.0, 0.2, 0.0], [0.9, 0.1, 0.3], [0.7, -0.2, 0.1], [0.0, 1.0, 0.5], [0.1, 0.8, -0.4], [-1.0, 0.3, 0.2]]
    labels = [0, 0, 0, 1, 1, 2]  # relation 2 has no positive: it only serves as a negative
    for t in (0.05, 0.3):
        expected = _nt_xent_by_hand(reps, labels, t)
        got64 = cp_loss(torch.tensor(reps, dtype=torch.float64), torch.tensor(labels), t).item()
        assert got64 == pytest.approx(expected, rel=1e-9)
        got16 = cp_loss(torch.tensor(reps, dtype=torch.bfloat16), torch.tensor(labels), t)
        assert got16.dtype == torch.float32 and got16.item() == pytest.approx(expected, rel=0.2)


def test_cp_loss_edge_cases_and_stability():
    same = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    assert cp_loss(same, torch.tensor([1, 1])).item() == pytest.approx(0.0, abs=1e-7)  # no negatives
    loss = cp_loss(same, torch.tensor([1, 2]))  # no positive pair
    assert loss.item() == 0.0
    loss.backward()
    assert same.grad is not None and torch.equal(same.grad, torch.zeros_like(same.grad))

    torch.manual_seed(0)
    big = (torch.randn(64, 32) * 100).requires_grad_()
    labels = torch.arange(64) // 2
    loss = cp_loss(big, labels, temperature=0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all() and big.grad.abs().sum() > 0
    # a near-perfect batch (each pair identical, pairs orthogonal) has a loss close to 0
    perfect = torch.eye(8).repeat_interleave(2, dim=0)
    assert cp_loss(perfect, torch.arange(16) // 2, 0.05).item() < 1e-6


def test_contrastive_accuracy_by_hand():
    reps = torch.tensor(REPS)
    # nearest other item: 0->1 (0.8, same), 1->0 (0.8, same), 2->3 (0.8, same), 3->2 (0.8, same)
    assert contrastive_accuracy(reps, torch.tensor([0, 0, 1, 1])) == 1.0
    # labels [0,1,0,1]: 0->1 wrong, 1->0 wrong, 2->3 wrong, 3->2 wrong
    assert contrastive_accuracy(reps, torch.tensor([0, 1, 0, 1])) == 0.0
    # labels [0,0,1,0]: 0->1 ok, 1->0 ok, 2->3 wrong, 3->2 wrong
    assert contrastive_accuracy(reps, torch.tensor([0, 0, 1, 0])) == 0.5


def test_mtb_loss_by_hand():
    a = torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.0, 0.3]])
    b = torch.tensor([[0.5, 0.25], [2.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([1, 0, 1])
    scores = [1.0, 0.0, 0.3]  # 0.5+0.5, 1.0-1.0, 0.3
    sig = [1 / (1 + math.exp(-s)) for s in scores]
    expected = -(math.log(sig[0]) + math.log(1 - sig[1]) + math.log(sig[2])) / 3
    assert mtb_loss(a, b, y).item() == pytest.approx(expected, rel=1e-6)


def test_mlm_loss_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]])
    labels = torch.tensor([[0, -100, 2]])
    lse0 = math.log(math.exp(2) + 2)
    expected = ((lse0 - 2.0) + math.log(3.0)) / 2
    assert mlm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    none = mlm_loss(logits.clone().requires_grad_(), torch.full((1, 3), -100))
    assert none.item() == 0.0 and none.requires_grad


CLS, SEP, PAD, MASK, VOCAB = 101, 102, 0, 103, 1000


def _batch(b=64, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(200, VOCAB, (b, length), generator=g)
    lengths = torch.randint(10, length + 1, (b,), generator=g)
    attn = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(b), lengths - 1] = SEP
    ids[attn == 0] = PAD
    head = torch.randint(1, 4, (b,), generator=g)
    tail = head + 3
    ids[torch.arange(b), head] = 1  # [unused0]
    ids[torch.arange(b), tail] = 3  # [unused2]
    return ids, attn, head, tail


def test_mlm_mask_never_touches_protected_special_or_padding():
    ids, attn, head, tail = _batch()
    protected = start_marker_mask(ids, head, tail)
    assert protected.sum() == 2 * ids.size(0) and bool(protected[torch.arange(64), head].all())
    forbidden = protected | (attn == 0) | torch.isin(ids, torch.tensor([CLS, SEP, PAD, MASK]))
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        masked, labels = mlm_mask(ids, attn, protected, mask_token_id=MASK, vocab_size=VOCAB,
                                  special_ids=[CLS, SEP, PAD, MASK], prob=0.5, generator=g)
        assert torch.equal(masked[forbidden], ids[forbidden])
        assert bool((labels[forbidden] == -100).all())
        selected = labels != -100
        assert torch.equal(labels[selected], ids[selected])
        assert torch.equal(masked[~selected], ids[~selected])


def test_mlm_mask_rates_and_determinism():
    ids, attn, head, tail = _batch(b=512, length=128, seed=1)
    protected = start_marker_mask(ids, head, tail)
    kwargs = dict(mask_token_id=MASK, vocab_size=VOCAB, special_ids=[CLS, SEP, PAD])
    masked, labels = mlm_mask(ids, attn, protected, generator=torch.Generator().manual_seed(5), **kwargs)
    eligible = (attn == 1) & ~protected & ~torch.isin(ids, torch.tensor([CLS, SEP, PAD]))
    selected = labels != -100
    n_sel = int(selected.sum())
    assert n_sel / int(eligible.sum()) == pytest.approx(0.15, abs=0.005)
    to_mask = (masked == MASK) & selected
    unchanged = (masked == ids) & selected
    replaced = selected & ~to_mask & ~unchanged
    assert int(to_mask.sum()) / n_sel == pytest.approx(0.80, abs=0.02)
    # a random draw equal to the original id (1/1000) counts as unchanged
    assert int(replaced.sum()) / n_sel == pytest.approx(0.10, abs=0.015)
    assert int(unchanged.sum()) / n_sel == pytest.approx(0.10, abs=0.015)
    again = mlm_mask(ids, attn, protected, generator=torch.Generator().manual_seed(5), **kwargs)
    other = mlm_mask(ids, attn, protected, generator=torch.Generator().manual_seed(6), **kwargs)
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    assert not torch.equal(other[1], labels)
