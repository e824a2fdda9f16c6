"""CP / MTB samplers: proportional relation draws, positives, hard negatives, blanking, seeds, resume, shards,
and the sentence-level rules: a positive is two different sentences, and no sentence occurs twice in a batch."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from recon.data_prep.corpus.index import CorpusExample, CorpusIndex, Mention
from recon.data_prep.corpus.kg import KnowledgeGraph
from recon.data_prep.corpus.linking import pair_examples
from recon.core.errors import ReconError
from recon.data_prep.formats import InputFormat, render
from recon.data_prep.samplers import CPSampler, MTBSampler
from recon.data_prep.special_tokens import SpecialTokens


def _example(uid: int, relation: str, head: str, tail: str) -> CorpusExample:
    # every row its own sentence text ("w2" was shared before): the samplers identify sentences by
    # their tokens, and rows with equal tokens would now count as ONE sentence, which is not what
    # these row-level tests are about (the sentence-level tests below build multi-row sentences)
    tokens = ("w0", head, f"s{uid}", "w3", tail, "w5")
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
    # 10x the bags and 50 pairs x 40 batches (was 500 x 4): a batch of 500 pairs needs 1000
    # distinct sentences now, and the draw must not exhaust a bag within one batch
    sizes = {"P1": 100, "P2": 300, "P3": 600, "P4": 1}
    sampler = CPSampler(_index(sizes), pairs_per_batch=50, seed=3)
    counts = Counter(p.relation for _ in range(40) for p in sampler.next_batch())
    assert sampler.stats["relation_exhausted"] == 0
    assert "P4" not in counts and sampler.stats["skipped_relations"] == 1
    assert sampler.stats["skipped_sentences"] == 1
    n = sum(counts.values())
    expected = {r: n * s / 1000 for r, s in sizes.items() if s >= 2}
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
    # 10x the sentences (was 12 + 9): 40 pairs need 80 distinct sentences in one batch now
    index = _index({"P1": 120, "P2": 90})
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
    # (9 sentences, was 5: 4 easy negatives need 8 distinct sentences in one batch now)
    examples = [_example(i, "P1", f"H{i}", f"T{i}") for i in range(9)]
    sampler = MTBSampler(CorpusIndex.from_examples(examples, 1), pairs_per_batch=8, seed=0)
    batch = sampler.next_batch()
    assert sampler.stats["positive_skipped"] == 4
    assert sampler.stats["hard_fallback_to_easy"] == 4
    assert [p.kind for p in batch] == ["easy"] * 4
    # 5 sentences: 2 easy negatives use 4 of them, the 5th has no unused partner, then none is left
    short = MTBSampler(CorpusIndex.from_examples(examples[:5], 1), pairs_per_batch=8, seed=0)
    assert [p.kind for p in short.next_batch()] == ["easy"] * 2
    assert short.stats["negative_skipped"] == 2 and short.stats["positive_skipped"] == 4
    # one sentence only: nothing can be drawn at all, still no crash
    lonely = MTBSampler(CorpusIndex.from_examples(examples[:1], 1), pairs_per_batch=4, seed=0)
    assert lonely.next_batch() == []
    assert lonely.stats["negative_skipped"] == 2 and lonely.stats["positive_skipped"] == 2


def test_blanking_rate_and_redraw_every_epoch():
    index = _index({"P1": 500, "P2": 500})  # was 50 + 50: 200 pairs need 400 distinct sentences now
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
    index = _index({"P1": 100})  # was 4: 50 pairs need 100 distinct sentences now
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


# ---- sentence level: the corpus writes one row per (ordered entity pair, KG relation) of a sentence ----

_KG = KnowledgeGraph.build([(h, r, t) for k in range(8) for h, r, t in (
    (f"A{k}", "r1", f"B{k}"), (f"A{k}", "r2", f"B{k}"),  # (A, B): two relations, so two rows per sentence
    (f"A{k}", "r1", f"C{k}"), (f"B{k}", "r3", f"C{k}"), (f"C{k}", "r2", f"D{k}"),
    (f"X{k}", "r4", f"Y{k}"), (f"X{k}", "r5", f"Y{k}"),  # (X, Y): one sentence only, but two rows
)])


def _sentence(sid: str, words: list[str]) -> list[CorpusExample]:
    """The rows the corpus builder writes for one sentence whose capitalised words are linked entities."""
    from recon.data_prep.corpus.linking import Mention as Linked

    mentions = [Linked(w, w, i, i + 1, "anchor") for i, w in enumerate(words) if w[0].isupper()]
    return pair_examples(sid, words, mentions, _KG, Counter(), num_shards=4)


def _family(k: int) -> list[CorpusExample]:
    rows = []
    for sid, words in (
        ("s1", [f"A{k}", "met", f"B{k}", "near", f"C{k}", "."]),  # 4 rows: (A,B) r1+r2, (A,C) r1, (B,C) r3
        ("s2", [f"A{k}", "and", f"B{k}", "married", "."]),       # 2 rows: (A,B) r1+r2
        ("s3", [f"X{k}", "founded", f"Y{k}", "."]),             # 2 rows: the only sentence of (X,Y)
        ("s4", [f"A{k}", "lives", "in", f"C{k}", "."]),
        ("s5", [f"B{k}", "visited", f"C{k}", "."]),
        ("s6", [f"C{k}", "borders", f"D{k}", "."]),
        ("s7", [f"A{k}", "and", f"B{k}", "married", "."]),       # s2 again on another source line
    ):
        rows.extend(_sentence(f"f{k}:{sid}", words))
    return rows


def _multi_row_index(families: int) -> CorpusIndex:
    return CorpusIndex.from_examples([row for k in range(families) for row in _family(k)], num_shards=4)


def _texts(index: CorpusIndex, batch) -> list[tuple[str, ...]]:
    return [index[d.index].tokens for p in batch for d in (p.a, p.b)]


def test_index_gives_every_sentence_text_one_dense_id():
    index = _multi_row_index(2)
    assert len(index) == 2 * 13 and index.num_texts == 2 * 6  # s7 repeats the text of s2
    assert sorted(set(index.text_ids.tolist())) == list(range(index.num_texts))
    by_text: dict = {}
    for i, ex in enumerate(index.examples):
        by_text.setdefault(ex.tokens, set()).add(int(index.text_ids[i]))
    assert all(len(ids) == 1 for ids in by_text.values())
    assert len({min(ids) for ids in by_text.values()}) == len(by_text) == index.num_texts
    s2 = [int(index.text_ids[i]) for i, ex in enumerate(index.examples) if ex.sentence_id in ("f0:s2", "f0:s7")]
    assert len(s2) == 4 and len(set(s2)) == 1


def test_mtb_positives_are_two_different_sentences_never_one_sentence_twice():
    index = _multi_row_index(1)
    sampler = MTBSampler(index, pairs_per_batch=2, seed=0)
    # (X, Y) has 2 rows but 1 sentence, (C, D) 1 row: no positive; (A,B), (A,C), (B,C) have 2 sentences
    assert sampler.stats["pairs_without_positive"] == 2
    positives = [p for _ in range(300) for p in sampler.next_batch() if p.kind == "positive"]
    assert len(positives) > 250
    for p in positives:
        a, b = index[p.a.index], index[p.b.index]
        assert a.pair == b.pair and a.tokens != b.tokens
        assert a.pair != ("X0", "Y0")
    # every sentence of (A, B) -- s1 and s2/s7 -- is used, from both sides
    assert {index[p.a.index].sentence_id for p in positives if index[p.a.index].pair == ("A0", "B0")} \
        == {"f0:s1", "f0:s2", "f0:s7"}


@pytest.mark.parametrize("cls", [CPSampler, MTBSampler])
def test_no_sentence_text_occurs_twice_in_a_batch(cls):
    index = _multi_row_index(8)
    sampler = cls(index, pairs_per_batch=8, seed=4)
    kinds: Counter = Counter()
    for _ in range(200):
        batch = sampler.next_batch()
        texts = _texts(index, batch)
        assert len(texts) == len(set(texts)), "a sentence occurs twice in one batch"
        for p in batch:
            a, b = index[p.a.index], index[p.b.index]
            if cls is CPSampler:
                assert a.relation == b.relation == p.relation
            kinds[getattr(p, "kind", "cp")] += 1
    if cls is MTBSampler:  # the rule did not starve a kind: all of them still occur
        assert kinds["positive"] > 0 and kinds["hard"] > 0


@pytest.mark.parametrize("cls", [CPSampler, MTBSampler])
def test_too_few_sentences_for_a_full_batch_are_counted_not_a_crash(cls):
    index = _multi_row_index(1)  # 6 sentences: at most 3 pairs in a batch
    sampler = cls(index, pairs_per_batch=10, seed=1)
    for _ in range(50):
        batch = sampler.next_batch()
        texts = _texts(index, batch)
        assert len(texts) == len(set(texts)) and len(batch) <= 3
        if cls is CPSampler:
            assert len(batch) >= 1  # the first pair of a batch can always be drawn
    skipped = (sampler.stats["pairs_skipped"] if cls is CPSampler
               else sampler.stats["positive_skipped"] + sampler.stats["negative_skipped"])
    assert skipped >= 50 * 7
    if cls is CPSampler:  # r4 and r5 live in (X, Y)'s single sentence only: no CP positive
        assert sampler.stats["skipped_relations"] == 2 and sampler.stats["skipped_rows"] == 2
        assert sampler.stats["skipped_sentences"] == 1 + 1


def test_multi_row_sampling_stays_deterministic_and_resumable():
    index = _multi_row_index(3)
    for cls in (CPSampler, MTBSampler):
        stream = [cls(index, 6, seed=2, steps_per_epoch=2).next_batch() for _ in range(2)]
        assert stream[0] == stream[1]
        full = cls(index, 6, seed=2, steps_per_epoch=2)
        batches = [full.next_batch() for _ in range(5)]
        resumed = cls(index, 6, seed=2, steps_per_epoch=2)
        resumed.load_state_dict({**full.state_dict(), "epoch": 1, "step": 0})
        assert [resumed.next_batch() for _ in range(3)] == batches[2:]
