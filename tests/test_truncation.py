"""Truncation keeps both entities whole whenever max_length allows it (data_prep.encoding.truncate),
and says how often it could not (Encoded flags, EncodedDataset counts)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from recon.data_prep.encoding import WordPieceCache, encode, truncate
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.formats import InputFormat, render
from recon.data_prep.special_tokens import SpecialTokens
from recon.models.train.batching import encode_examples

DATASETS = Path("/work/shared/datasets")


def _typed(example: RelationExample) -> RelationExample:
    """C+T / OnlyT need entity types; hand-built cases give both mentions a type."""
    from dataclasses import replace

    return replace(example, head=replace(example.head, type="ORG", type_source="annotation"),
                   tail=replace(example.tail, type="PERSON", type_source="annotation"))


def _layout(rendered, pieces: WordPieceCache) -> tuple[list[int], tuple[int, int], tuple[int, int]]:
    """Independently of ``encode``: all ids and the head / tail entity piece ranges of ``rendered``."""
    ids, starts = [], []
    for word in rendered.words:
        starts.append(len(ids))
        ids.extend(pieces.ids(word))
    starts.append(len(ids))
    (h0, h1), (t0, t1) = rendered.head_span, rendered.tail_span
    return ids, (starts[h0], starts[h1]), (starts[t0], starts[t1])


def _check(tok, example, fmt, max_length, **render_kw):
    """Encode and check the invariants every encoding must satisfy; returns (enc, head, tail, all ids)."""
    tokenizer, special, pieces = tok
    rendered = render(example, fmt, special, **render_kw)
    enc = encode(rendered, pieces, max_length)
    ids, (h0, h1), (t0, t1) = _layout(rendered, pieces)
    head, tail = ids[h0:h1], ids[t0:t1]
    out = list(enc.input_ids)
    assert out[0] == tokenizer.cls_token_id and out[-1] == tokenizer.sep_token_id
    assert len(out) == min(max_length, len(ids) + 2)
    assert enc.truncated == (len(ids) + 2 > max_length)
    # the representation positions always hold the head/tail START token (marker, blank or type)
    assert out[enc.head_pos] == head[0] and out[enc.tail_pos] == tail[0]
    if not enc.entity_truncated:  # both entities whole: start marker, every mention piece, end marker
        assert out[enc.head_pos:enc.head_pos + len(head)] == head
        assert out[enc.tail_pos:enc.tail_pos + len(tail)] == tail
    return enc, head, tail, ids


ALL_FORMATS = list(InputFormat)


# ---- hand-built cases, every format -------------------------------------------------------------

def _late_tail_example() -> RelationExample:
    """A 1-word head, 20 words later a 3-word tail, then 30 more words: 55 words, entities 28 pieces
    wide in C+M. At max_length 32 the old window (centred on the two START markers) kept
    ``[E2] alpha beta gamma`` but cut ``[/E2]``."""
    tokens = ["word"] * 60 + ["john"] + ["the"] * 20 + ["alpha", "beta", "gamma"] + ["end"] * 30
    return RelationExample(tuple(tokens), Entity(60, 61), Entity(81, 84), "r")


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=[f.value for f in ALL_FORMATS])
def test_later_mention_near_the_end_stays_whole(tok, fmt):
    ex = _typed(_late_tail_example())
    enc, head, tail, ids = _check(tok, ex, fmt, 32)
    assert not enc.entity_truncated and not enc.context_split
    if fmt in (InputFormat.CM, InputFormat.CT, InputFormat.ONLYC):
        assert enc.truncated and len(enc.input_ids) == 32
        # one contiguous window: the text between the entities is all there
        between = enc.tail_pos - (enc.head_pos + len(head))
        assert between == 20
    else:  # OnlyM / OnlyT hold only the entities: nothing to cut
        assert not enc.truncated


def test_later_mention_end_marker_survives_at_the_end_of_the_sentence(tok):
    """Tail ends the sentence: the window ends there too, all spare room goes before the head."""
    tokens = ["word"] * 80 + ["john"] + ["the"] * 10 + ["alpha", "beta", "gamma"]
    ex = RelationExample(tuple(tokens), Entity(80, 81), Entity(91, 94), "r")
    tokenizer, special, _ = tok
    enc, head, tail, _ = _check(tok, ex, InputFormat.CM, 32)
    out = tokenizer.convert_ids_to_tokens(list(enc.input_ids))
    assert out[-3:] == ["gamma", special.tail_end, "[SEP]"]
    assert enc.truncated and not enc.entity_truncated and not enc.context_split


@pytest.mark.parametrize("tail_first", [False, True])
@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=[f.value for f in ALL_FORMATS])
def test_entities_too_far_apart_keep_both_whole_in_two_windows(tok, fmt, tail_first):
    tokens = ["word"] * 10 + ["john", "smith"] + ["the"] * 140 + ["alpha", "beta", "gamma"] + ["end"] * 40
    a, b = Entity(10, 12), Entity(152, 155)
    ex = _typed(RelationExample(tuple(tokens), *((b, a) if tail_first else (a, b)), "r"))
    enc, head, tail, ids = _check(tok, ex, fmt, 32)
    assert not enc.entity_truncated
    if fmt in (InputFormat.ONLYM, InputFormat.ONLYT):
        assert not enc.truncated and not enc.context_split
        return
    assert enc.truncated and enc.context_split and len(enc.input_ids) == 32
    first, second = sorted((enc.head_pos, enc.tail_pos))
    first_len = len(head) if first == enc.head_pos else len(tail)
    # spare room is shared: context on both sides of both entities
    assert first > 1 and second - (first + first_len) > 0
    assert len(enc.input_ids) - 1 - (second + (len(tail) if second == enc.tail_pos else len(head))) > 0


def test_long_second_mention_is_cut_but_both_starts_stay_in_one_window(tok):
    tokenizer, special, _ = tok
    tokens = ["word"] * 10 + ["john"] + ["the"] * 5 + ["alpha"] * 40 + ["end"] * 10
    ex = RelationExample(tuple(tokens), Entity(10, 11), Entity(16, 56), "r")
    enc, head, tail, _ = _check(tok, ex, InputFormat.CM, 32)
    assert enc.truncated and enc.entity_truncated and not enc.context_split
    out = tokenizer.convert_ids_to_tokens(list(enc.input_ids))
    assert out[1:4] == [special.head_start, "john", special.head_end]  # window starts at the first entity
    assert out[enc.tail_pos - 5:enc.tail_pos] == ["the"] * 5  # the text between kept
    assert special.tail_end not in out and out[enc.tail_pos + 1:-1] == ["alpha"] * (30 - 9)
    for fmt in (InputFormat.ONLYM, InputFormat.CM):  # OnlyM too: the mention alone is too long
        enc, *_ = _check(tok, ex, fmt, 32)
        assert enc.entity_truncated


def test_long_mentions_far_apart_keep_leading_pieces_of_each(tok):
    tokenizer, special, _ = tok
    tokens = ["alpha"] * 40 + ["the"] * 50 + ["beta"] * 40
    ex = RelationExample(tuple(tokens), Entity(90, 130), Entity(0, 40), "r")  # head is the later one
    enc, head, tail, _ = _check(tok, ex, InputFormat.CM, 32)
    assert enc.truncated and enc.entity_truncated and enc.context_split
    out = tokenizer.convert_ids_to_tokens(list(enc.input_ids))
    assert out[1] == special.tail_start and out[2:16] == ["alpha"] * 14
    assert out[16] == special.head_start and out[17:31] == ["beta"] * 14


def test_blanked_mentions_keep_their_markers(tok):
    """Pre-training's blanked C+M mentions are entity spans too: [E1] [BLANK] [/E1] stays whole."""
    tokenizer, special, _ = tok
    enc, head, tail, _ = _check(tok, _late_tail_example(), InputFormat.CM, 32, blank_head=True, blank_tail=True)
    out = tokenizer.convert_ids_to_tokens(list(enc.input_ids))
    assert out[enc.tail_pos:enc.tail_pos + 3] == [special.tail_start, special.tail_blank, special.tail_end]


def test_short_sentence_is_untouched(tok):
    ex = _typed(_late_tail_example())
    for fmt in ALL_FORMATS:
        enc, _, _, ids = _check(tok, ex, fmt, 512)
        assert not (enc.truncated or enc.entity_truncated or enc.context_split)
        assert list(enc.input_ids[1:-1]) == ids


def test_budget_too_small_for_two_start_positions_is_an_error(tok):
    with pytest.raises(ValueError, match="max_length"):
        _check(tok, _late_tail_example(), InputFormat.CM, 3)


# ---- truncate() on random layouts ---------------------------------------------------------------

def test_truncate_windows_on_random_layouts():
    rng = random.Random(0)
    for _ in range(5000):
        budget = rng.randint(2, 40)
        length = rng.randint(2, 80)
        cut = sorted(rng.sample(range(1, length), 1) + [0, length])
        a0 = rng.randint(0, cut[1] - 1)
        a1 = rng.randint(a0 + 1, cut[1])
        b0 = rng.randint(a1, length - 1)
        b1 = rng.randint(b0 + 1, length)
        spans = [(a0, a1), (b0, b1)] if rng.random() < 0.5 else [(b0, b1), (a0, a1)]
        windows, split, entity_cut = truncate(length, spans, budget)
        kept = [i for lo, hi in windows for i in range(lo, hi)]
        assert kept == sorted(set(kept)) and all(0 <= i < length for i in kept)
        assert len(kept) == min(length, budget)
        assert a0 in kept and b0 in kept  # the representation positions
        assert split == (len(windows) == 2)
        whole = set(range(a0, a1)) <= set(kept) and set(range(b0, b1)) <= set(kept)
        assert whole == (not entity_cut)
        # entities whole exactly when they fit; the text between them kept when everything fits
        assert entity_cut == ((a1 - a0) + (b1 - b0) > budget)
        assert split == (b1 - a0 > budget and (not entity_cut or b0 - a0 >= budget))
        if not split and length > budget and not entity_cut:  # one window: spare room centred
            before, after = a0 - windows[0][0], windows[0][1] - b1
            assert abs(before - after) <= 1 or before == a0 or after == length - b1


# ---- real data: ChemProt test at length 100 -----------------------------------------------------

@pytest.fixture(scope="module")
def chemprot_test():
    from recon.data_prep.registry import load_dataset

    if not (DATASETS / "chemprot").is_dir():
        pytest.skip("ChemProt is not under /work/shared/datasets")
    return load_dataset("chemprot", data_dir=str(DATASETS)).splits["test"]


@pytest.mark.parametrize("fmt", [InputFormat.CM, InputFormat.ONLYC, InputFormat.ONLYM],
                         ids=["C+M", "OnlyC", "OnlyM"])
def test_chemprot_test_at_100_loses_no_entity_that_fits(tok, chemprot_test, fmt):
    tokenizer, special, pieces = tok
    budget = 98
    expected = {"truncated": 0, "context_split": 0, "entity_truncated": 0}
    for ex in chemprot_test:
        enc, head, tail, ids = _check(tok, ex, fmt, 100)  # both entities whole whenever they fit
        _, *spans = _layout(render(ex, fmt, special), pieces)
        (a0, a1), (b0, b1) = sorted(spans)
        entities_fit = (a1 - a0) + (b1 - b0) <= budget
        assert enc.entity_truncated == (not entities_fit)
        if fmt is InputFormat.CM and entities_fit:
            out = list(enc.input_ids)
            for marker in (special.head_start, special.head_end, special.tail_start, special.tail_end):
                assert out.count(tokenizer.convert_tokens_to_ids(marker)) == 1, ex.source
        expected["truncated"] += len(ids) > budget
        expected["context_split"] += b1 - a0 > budget and (entities_fit or b0 - a0 >= budget)
        expected["entity_truncated"] += not entities_fit
    data = encode_examples(chemprot_test, fmt, tokenizer, special, 100, None)
    stats = data.truncation_stats()
    assert stats == {"examples": len(chemprot_test), **expected, "marker_cut": 0}  # the window never cuts a marker
    assert (data.n_truncated, data.n_context_split, data.n_entity_truncated) == \
        (expected["truncated"], expected["context_split"], expected["entity_truncated"])
    if fmt is InputFormat.CM:  # measured: 363 windowed, 40 split around the entities, 1 cut (a 60-word name)
        assert (stats["truncated"], stats["context_split"], stats["entity_truncated"]) == (363, 40, 1)
