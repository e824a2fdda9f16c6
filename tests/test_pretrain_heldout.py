"""Held-out evaluation of CP/MTB pre-training: a slice of sentences chosen by a hash of their text
(the same on every rank and in every run) is never trained on, and the model's contrastive accuracy
on fixed batches of it is reported against its chance level."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from recon.data_prep.corpus import load_corpus
from recon.data_prep.corpus.index import CorpusExample, CorpusIndex
from recon.data_prep.samplers import CPSampler, MTBSampler
from recon.models.nets.loading import load_encoder
from recon.models.pretrain.step import PretrainNet
from recon.models.pretrain.batches import TokenContext
from recon.models.pretrain.heldout import evaluate_heldout, heldout_batches, heldout_score, is_heldout, split_heldout
from tiny_bert import make_tiny_bert_dir

CORPUS = Path(__file__).parent / "fixtures" / "pretrain" / "corpus"
FRACTION = 0.4  # the fixture has 64 sentences: a large share leaves a few held-out CP pairs per rank


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_encoder(str(make_tiny_bert_dir(tmp_path_factory.mktemp("enc"), mlm=True)), mlm_head=True)


def _texts(index) -> set[tuple[str, ...]]:
    return {tuple(ex.tokens) for ex in index.examples}


@pytest.mark.parametrize("sampler_cls", [CPSampler, MTBSampler])
def test_the_sampler_never_draws_a_heldout_sentence(pretrain_corpus, sampler_cls):
    train, heldout = split_heldout(pretrain_corpus, FRACTION)
    assert len(train) + len(heldout) == len(pretrain_corpus) and len(heldout) > 0
    assert not _texts(train) & _texts(heldout)  # disjoint at the sentence (token sequence) level
    held = _texts(heldout)
    for rank in range(2):
        sampler = sampler_cls(train, 4, seed=3, rank=rank, world_size=2)
        drawn = {tuple(train[d.index].tokens) for _ in range(40) for p in sampler.next_batch() for d in (p.a, p.b)}
        assert drawn and not drawn & held


def test_a_sentence_with_rows_on_two_ranks_is_held_out_on_both():
    """A sentence can carry several entity pairs, whose rows hash to different shards (ranks): the
    decision follows the text, so neither rank trains on it."""
    base = load_corpus(CORPUS).examples
    held = next(ex for ex in base if is_heldout(ex.tokens, FRACTION))
    kept = next(ex for ex in base if not is_heldout(ex.tokens, FRACTION))
    rows = [replace(held, uid="a", shard=0), replace(held, uid="b", head=replace(held.head, id="Qx"), shard=1),
            replace(kept, uid="c", shard=0), replace(kept, uid="d", shard=1)]
    index = CorpusIndex(rows, num_shards=2)
    for shard in (0, 1):
        part = CorpusIndex([r for r in rows if r.shard == shard], num_shards=2, shard_ids=(shard,))
        train, heldout = split_heldout(part, FRACTION)
        assert [r.uid for r in heldout.examples] == ["ab"[shard]] and [r.uid for r in train.examples] == ["cd"[shard]]
    assert [r.uid for r in split_heldout(index, FRACTION)[1].examples] == ["a", "b"]


def test_the_slice_is_the_same_on_every_rank_and_in_every_process(pretrain_corpus):
    _, whole = split_heldout(pretrain_corpus, FRACTION)
    by_rank = [split_heldout(load_corpus(CORPUS, shard_ids=[s]), FRACTION)[1] for s in (0, 1)]
    assert [ex.uid for ex in whole.examples] == [ex.uid for part in by_rank for ex in part.examples]
    assert all(ex.shard == s for s, part in enumerate(by_rank) for ex in part.examples)  # partition intact
    # a fresh interpreter with another hash seed computes the same scores (no Python hash())
    code = ("from recon.models.pretrain.heldout import heldout_score; "
            "print(repr(heldout_score(('Paris', 'is', 'in', 'France'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert float(out) == heldout_score(("Paris", "is", "in", "France"))
    assert 0.0 <= float(out) < 1.0
    assert split_heldout(pretrain_corpus, 0.0) == (pretrain_corpus, None)


def test_heldout_accuracy_is_computed_with_its_chance_level(pretrain_corpus, bundle):
    _, heldout = split_heldout(pretrain_corpus, FRACTION)
    ctx = TokenContext.for_bundle(bundle, 64)
    batches = heldout_batches(heldout, "cp", ctx, batches=4, pairs=4, p_blank=0.7, seed=0)
    again = heldout_batches(heldout, "cp", ctx, batches=4, pairs=4, p_blank=0.7, seed=0)
    assert batches and all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(batches, again))  # fixed set
    assert all(b.n_masked == 0 for b in batches)  # scored on clean text (blanking as in training)
    net = PretrainNet(bundle.model).train()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    score = evaluate_heldout(net, batches, "cp", device=torch.device("cpu"))
    assert net.training  # mode restored
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())
    assert score.items == sum(b.n_sentences for b in batches) and score.batches == len(batches)
    assert 0.0 <= score.accuracy <= 1.0
    # chance: for each sentence, the share of the other 2N - 1 sentences of its batch with its relation
    expected = sum(float(((b.relation_ids == r).sum() - 1) / (b.n_sentences - 1))
                   for b in batches for r in b.relation_ids)
    assert score.chance == pytest.approx(expected)
    distinct = [b for b in batches if len(set(b.relation_ids.tolist())) == b.n_pairs]
    for b in distinct:  # N different relations: exactly 1 / (2N - 1)
        one = evaluate_heldout(net, [b], "cp", device=torch.device("cpu"))
        assert one.chance_accuracy == pytest.approx(1 / (2 * b.n_pairs - 1))
    # eval mode: no dropout, so scoring twice gives the same figures
    assert evaluate_heldout(net, batches, "cp", device=torch.device("cpu")) == score


def test_heldout_accuracy_counts_nearest_neighbours_by_hand(pretrain_corpus, bundle):
    """An encoder whose representation IS the relation scores 1; one that ignores it scores chance."""
    _, heldout = split_heldout(pretrain_corpus, FRACTION)
    batches = heldout_batches(heldout, "cp", TokenContext.for_bundle(bundle, 64), batches=3, pairs=4,
                              p_blank=0.0, seed=1)

    class Oracle(torch.nn.Module):
        def __init__(self, batch):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.ids = batch.relation_ids

        def forward(self, input_ids, attention_mask, head_pos, tail_pos, mlm_positions):
            onehot = torch.nn.functional.one_hot(torch.unique(self.ids, return_inverse=True)[1]).float()
            return onehot + self.w, torch.zeros(0, 3)

    for b in batches:
        assert evaluate_heldout(Oracle(b), [b], "cp", device=torch.device("cpu")).accuracy == 1.0


def test_mtb_heldout_uses_the_majority_class_as_chance(bundle):
    base = load_corpus(CORPUS).examples[:24]
    rows = [CorpusExample(ex.uid, ex.sentence_id, ex.tokens, ex.relation, replace(ex.head, id="Q1"),
                          replace(ex.tail, id="Q2" if k % 3 else "Q3"), 0) for k, ex in enumerate(base)]
    index = CorpusIndex.from_examples(rows, num_shards=1)
    batches = heldout_batches(index, "mtb", TokenContext.for_bundle(bundle, 64), batches=2, pairs=6,
                              p_blank=0.0, seed=0)
    assert batches
    score = evaluate_heldout(PretrainNet(bundle.model), batches, "mtb", device=torch.device("cpu"))
    positives = sum(float(b.targets.sum()) for b in batches)
    assert score.items == sum(b.n_pairs for b in batches)
    assert score.chance == sum(max(float(b.targets.sum()), b.n_pairs - float(b.targets.sum())) for b in batches)
    assert positives > 0 and 0.0 <= score.accuracy <= 1.0


def test_a_rank_without_heldout_pairs_scores_nothing(pretrain_corpus, bundle):
    ctx = TokenContext.for_bundle(bundle, 64)
    assert heldout_batches(None, "cp", ctx, batches=4, pairs=4, p_blank=0.7, seed=0) == []
    _, tiny = split_heldout(pretrain_corpus, 0.05)  # 2 sentences of 2 relations: no CP pair
    assert heldout_batches(tiny, "cp", ctx, batches=4, pairs=4, p_blank=0.7, seed=0) == []
    score = evaluate_heldout(PretrainNet(bundle.model), [], "cp", device=torch.device("cpu"))
    assert score.items == 0 and score.accuracy != score.accuracy  # nan
