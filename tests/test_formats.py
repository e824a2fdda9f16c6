"""The five input formats through the real MiniLM tokenizer (data_prep.formats + encoding)."""
from __future__ import annotations

import os

import pytest

from recon.data_prep.encoding import WordPieceCache, encode
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.formats import InputFormat, render
from recon.data_prep.special_tokens import SpecialTokens


def _example(tail_first: bool = False) -> RelationExample:
    tokens = ("the", "new", "york", "times", "hired", "john", "smith", "in", "paris", ".")
    a = Entity(1, 4, type="ORG", type_source="annotation")
    b = Entity(5, 7, type="PERSON", type_source="annotation")
    head, tail = (b, a) if tail_first else (a, b)
    return RelationExample(tokens, head, tail, "employer")


def _pieces(tok, fmt, example, max_length=100, **kw):
    tokenizer, special, cache = tok
    enc = encode(render(example, fmt, special, **kw), cache, max_length)
    return enc, tokenizer.convert_ids_to_tokens(list(enc.input_ids)), special


def test_cm_markers_and_positions(tok):
    enc, pieces, sp = _pieces(tok, InputFormat.CM, _example())
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert pieces[enc.head_pos] == sp.head_start == "[unused0]" and pieces[enc.tail_pos] == sp.tail_start
    assert pieces[enc.head_pos:enc.head_pos + 5] == ["[unused0]", "new", "york", "times", "[unused1]"]


def test_ct_one_type_token_per_multiword_mention(tok):
    enc, pieces, sp = _pieces(tok, InputFormat.CT, _example())
    assert pieces.count(sp.type_token("subj", "ORG")) == 1 and pieces.count(sp.type_token("obj", "PERSON")) == 1
    assert "york" not in pieces and "smith" not in pieces and "paris" in pieces
    assert pieces[enc.head_pos] == sp.type_token("subj", "ORG")


def test_onlyc_one_blank_per_mention_no_leak(tok):
    enc, pieces, sp = _pieces(tok, InputFormat.ONLYC, _example())
    assert pieces.count(sp.head_blank) == 1 and pieces.count(sp.tail_blank) == 1
    assert "times" not in pieces and "smith" not in pieces  # no leaked last mention token
    assert pieces[1:4] == ["the", sp.head_blank, "hired"]  # the word before a mention is kept
    assert pieces[-1] == "[SEP]"


@pytest.mark.parametrize("tail_first", [False, True])
def test_onlym_only_mentions_in_sentence_order(tok, tail_first):
    enc, pieces, sp = _pieces(tok, InputFormat.ONLYM, _example(tail_first))
    first, second = ("[unused0]", "[unused2]") if not tail_first else ("[unused2]", "[unused0]")
    close1, close2 = ("[unused1]", "[unused3]") if not tail_first else ("[unused3]", "[unused1]")
    assert pieces == ["[CLS]", first, "new", "york", "times", close1, second, "john", "smith", close2, "[SEP]"]
    assert pieces[enc.head_pos] == "[unused0]" and pieces[enc.tail_pos] == "[unused2]"


def test_onlyt_two_type_tokens(tok):
    enc, pieces, sp = _pieces(tok, InputFormat.ONLYT, _example(True))
    assert pieces == ["[CLS]", sp.type_token("obj", "ORG"), sp.type_token("subj", "PERSON"), "[SEP]"]
    assert (enc.head_pos, enc.tail_pos) == (2, 1)


def test_truncation_keeps_both_markers(tok):
    tokens = tuple(["word"] * 60 + ["alpha"] + ["filler"] * 80 + ["omega"] + ["end"] * 40)
    ex = RelationExample(tokens, Entity(60, 61), Entity(141, 142), "r")
    enc, pieces, sp = _pieces(tok, InputFormat.CM, ex, max_length=32)
    assert enc.truncated and len(pieces) == 32 and pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert pieces[enc.head_pos] == sp.head_start and pieces[enc.tail_pos] == sp.tail_start
    assert pieces.count(sp.head_start) == 1 and pieces.count(sp.tail_start) == 1
    assert pieces[enc.head_pos + 1] == "alpha" and pieces[enc.tail_pos + 1] == "omega"


def test_blank_keeps_markers(tok):
    enc, pieces, sp = _pieces(tok, InputFormat.CM, _example(), blank_head=True)
    assert pieces[enc.head_pos:enc.head_pos + 3] == [sp.head_start, sp.head_blank, sp.head_end]
