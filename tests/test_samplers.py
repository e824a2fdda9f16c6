"""CP / MTB samplers: proportional relation draws, positives, hard negatives, blanking, seeds, resume, shards."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from recon.data_prep.corpus.index import CorpusExample, CorpusIndex, Mention
from recon.data_prep.errors import ReconError
from recon.data_prep.formats import InputFormat, render
from recon.data_prep.samplers import CPSampler, MTBSampler
from recon.data_prep.special_tokens import SpecialTokens


def _example(uid: int, relation: str, head: str, tail: str) -> CorpusExample:
    tokens = ("w0", head, "w2", "w3", tail, "w5")
    return CorpusExample(f"u{uid}", f"s{uid}", tokens, relation,
                         Mention(head, head, 1, 2, "anchor"), Mention(tail, tail, 4, 5, "ner_alias"))


def _index(bag_sizes: dict[str, int], num_shards: int = 4) -> CorpusIndex:
    """Relation r's sentences cycle over 3 entity pairs of its own, sharing entity E_r between pairs."""
    examples, uid = [], 0
    for relation, size in bag_sizes.items():
        for k in range(size):
            examples.append(_example(uid, relation, f"E_{relation}", f"T_{relation}_{k % 3}"))
            uid += 1
    return CorpusIndex.from_examples(examples, num_shards=num_shards)


def test_cp_samples_relations_in_proportion_to_bag_size():
    sizes = {"P1": 10, "P2": 30, "P3": 60, "P4": 1}
    sampler = CPSampler(_index(sizes), pairs_per_batch=500, seed=3)
    counts = Counter(p.relation for _ in range(4) for p in sampler.next_batch())
    assert "P4" not in counts and sampler.stats["skipped_relations"] == 1
    assert sampler.stats["skipped_sentences"] == 1
    n = sum(counts.values())
    expected = {r: n * s / 100 for r, s in sizes.items() if s >= 2}
    chi2 = sum((counts[r] - e) ** 2 / e for r, e in expected.items())
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_cp_positives_are_two_distinct_sentences_of_the_relation():
    index = _index({"P1": 2, "P2": 5})
    for pair in CPSampler(index, pairs_per_batch=64, seed=0).next_batch():
        assert pair.a.index != pair.b.index
        assert index[pair.a.index].relation == index[pair.b.index].relation == pair.relation


def test_cp_with_no_usable_bag_raises_a_clear_error():
    with pytest.raises(ReconError, match="2 or more sentences"):
        CPSampler(_index({"P1": 1, "P2": 1}), pairs_per_batch=4)


def test_mtb_positives_share_the_pair_and_hard_negatives_exactly_one_entity():
    index = _index({"P1": 12, "P2": 9})
    sampler = MTBSampler(index, pairs_per_batch=40, seed=1)
    batch = sampler.next_batch()
    assert sum(p.target for p in batch) == 20 and len(batch) == 40
    kinds = Counter(p.kind for p in batch)
    assert kinds["hard"] == 20  # every anchor has siblings E_r x T_r_other
    for p in batch:
        a, b = index[p.a.index], index[p.b.index]
        shared = len(set(a.pair) & set(b.pair))
        assert p.a.index != p.b.index
        if p.kind == "positive":
            assert a.pair == b.pair
        elif p.kind == "hard":
            assert shared == 1
        else:
            assert shared == 0


def test_mtb_falls_back_and_counts_instead_of_crashing():
    # every sentence has its own pair, and no entity is shared: no positive, no hard negative
    examples = [_example(i, "P1", f"H{i}", f"T{i}") for i in range(5)]
    sampler = MTBSampler(CorpusIndex.from_examples(examples, 1), pairs_per_batch=8, seed=0)
    batch = sampler.next_batch()
    assert sampler.stats["positive_skipped"] == 4
    assert sampler.stats["hard_fallback_to_easy"] == 4
    assert [p.kind for p in batch] == ["easy"] * 4
    # one sentence only: nothing can be drawn at all, still no crash
    lonely = MTBSampler(CorpusIndex.from_examples(examples[:1], 1), pairs_per_batch=4, seed=0)
    assert lonely.next_batch() == []
    assert lonely.stats["negative_skipped"] == 2 and lonely.stats["positive_skipped"] == 2


def test_blanking_rate_and_redraw_every_epoch():
    index = _index({"P1": 50, "P2": 50})
    sampler = CPSampler(index, pairs_per_batch=200, p_blank=0.3, seed=7, steps_per_epoch=1)
    epoch0 = sampler.next_batch()
    assert sampler.epoch == 1
    epoch1 = sampler.next_batch()
    flags0 = np.array([[d.blank_head, d.blank_tail] for p in epoch0 for d in (p.a, p.b)])
    flags1 = np.array([[d.blank_head, d.blank_tail] for p in epoch1 for d in (p.a, p.b)])
    assert abs(flags0.mean() - 0.3) < 0.05 and abs(flags1.mean() - 0.3) < 0.05
    # the same sentence gets fresh decisions in another epoch
    seen0 = {d.index: (d.blank_head, d.blank_tail) for p in epoch0 for d in (p.a, p.b)}
    seen1 = {d.index: (d.blank_head, d.blank_tail) for p in epoch1 for d in (p.a, p.b)}
    common = set(seen0) & set(seen1)
    assert len(common) > 30
    assert sum(seen0[i] != seen1[i] for i in common) > 0.2 * len(common)


def test_blanking_decisions_plug_into_render():
    index = _index({"P1": 4})
    special = SpecialTokens.for_vocab([f"[unused{i}]" for i in range(200)])
    sampler = CPSampler(index, pairs_per_batch=50, p_blank=0.5, seed=0)
    for pair in sampler.next_batch():
        draw = pair.a
        example = index[draw.index].to_relation_example()
        words = render(example, InputFormat.CM, special,
                       blank_head=draw.blank_head, blank_tail=draw.blank_tail).words
        assert (special.head_blank in words) == draw.blank_head
        assert (special.tail_blank in words) == draw.blank_tail
        assert (example.tokens[example.head.start] in words) != draw.blank_head


def test_same_seed_same_stream_and_different_seed_differs():
    index = _index({"P1": 20, "P2": 20, "P3": 20})
    run = lambda seed: [(p.a, p.b) for _ in range(3) for p in CPSampler(index, 16, seed=seed).next_batch()]
    assert run(5) == run(5)
    assert run(5) != run(6)


@pytest.mark.parametrize("cls", [CPSampler, MTBSampler])
def test_state_dict_resume_continues_identically(cls):
    index = _index({"P1": 20, "P2": 20, "P3": 20})
    full = cls(index, 8, seed=11, steps_per_epoch=3)
    stream = [full.next_batch() for _ in range(7)]
    first = cls(index, 8, seed=11, steps_per_epoch=3)
    for _ in range(4):
        first.next_batch()
    state = first.state_dict()
    resumed = cls(index, 8, seed=11, steps_per_epoch=3)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.step) == (1, 1)
    assert [resumed.next_batch() for _ in range(3)] == stream[4:]
    with pytest.raises(ValueError, match="seed"):
        cls(index, 8, seed=12).load_state_dict(state)


@pytest.mark.parametrize("cls", [CPSampler, MTBSampler])
def test_ranks_draw_disjoint_sentences(cls):
    index = _index({f"P{i}": 30 for i in range(6)}, num_shards=8)
    seen = []
    for rank in range(2):
        sampler = cls(index, 32, seed=0, rank=rank, world_size=2)
        seen.append({d.index for _ in range(5) for p in sampler.next_batch() for d in (p.a, p.b)})
        assert all(index[i].shard % 2 == rank for i in seen[-1])
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    with pytest.raises(ReconError, match="shards"):
        cls(index, 32, rank=0, world_size=16)
