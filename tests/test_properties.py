"""Property-based tests (hypothesis): loaders, format renderers, and the encoder's windowing.

* loaders: generated valid records survive a write + load round trip (spans, tokens, labels), and
  ANY byte string gives either examples or a :class:`DataError` located in that file, never another
  exception;
* renderers: markers always balanced, entity spans preserved, OnlyC blanks both mentions and keeps
  the context;
* ``recon.data_prep.encoding.truncate``: windows inside the sequence and the budget, both
  representation tokens kept, both entities whole whenever they fit.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from recon.data_prep.encoding import truncate
from recon.core.errors import DataError
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.formats import InputFormat, render
from recon.data_prep.loaders import load_file
from recon.data_prep.special_tokens import SpecialTokens

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECIAL = SpecialTokens.for_vocab([])

word = st.text(alphabet=st.characters(categories=("L", "N", "P"), exclude_characters="<>[]"), min_size=1, max_size=8)
label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_:()-,", min_size=1, max_size=12)


@st.composite
def sentences(draw, min_tokens: int = 2, max_tokens: int = 30):
    """Tokens and two non-overlapping end-exclusive spans (either order)."""
    tokens = draw(st.lists(word, min_size=min_tokens, max_size=max_tokens))
    n = len(tokens)
    cut = draw(st.integers(1, n - 1))  # one span left of the cut, one right of it
    a0 = draw(st.integers(0, cut - 1))
    a1 = draw(st.integers(a0 + 1, cut))
    b0 = draw(st.integers(cut, n - 1))
    b1 = draw(st.integers(b0 + 1, n))
    first, second = (a0, a1), (b0, b1)
    if draw(st.booleans()):
        first, second = second, first
    return tokens, first, second


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------ loader round trips

@SETTINGS
@given(st.lists(st.tuples(sentences(), label), min_size=1, max_size=8))
def test_opennre_round_trip(records):
    lines = [{"token": toks, "h": {"name": " ".join(toks[h[0]:h[1]]), "pos": list(h)},
              "t": {"name": " ".join(toks[t[0]:t[1]]), "pos": list(t)}, "relation": rel}
             for (toks, h, t), rel in records]
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "train.txt", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines).encode())
        examples = load_file(path, "opennre")
    assert len(examples) == len(records)
    for ex, ((toks, h, t), rel), line in zip(examples, records, range(1, len(records) + 1)):
        assert ex.tokens == tuple(toks) and ex.label == rel and ex.source == f"{path}:{line}"
        assert (ex.head.start, ex.head.end, ex.tail.start, ex.tail.end) == (*h, *t)


@SETTINGS
@given(st.lists(st.tuples(sentences(), label), min_size=1, max_size=8))
def test_tacred_round_trip_converts_inclusive_ends(records):
    rows = [{"id": str(i), "relation": rel, "token": toks, "subj_start": h[0], "subj_end": h[1] - 1,
             "obj_start": t[0], "obj_end": t[1] - 1, "subj_type": "PERSON", "obj_type": "CITY"}
            for i, ((toks, h, t), rel) in enumerate(records)]
    with tempfile.TemporaryDirectory() as tmp:
        examples = load_file(_write(Path(tmp), "train.json", json.dumps(rows).encode()), "tacred")
    for ex, ((toks, h, t), rel) in zip(examples, records, strict=True):
        assert ex.tokens == tuple(toks) and ex.label == rel
        assert (ex.head.start, ex.head.end, ex.tail.start, ex.tail.end) == (*h, *t)
        assert ex.head.type == "PERSON" and ex.head.type_source == "annotation"


@SETTINGS
@given(st.dictionaries(st.from_regex(r"P[0-9]{1,4}", fullmatch=True), st.lists(sentences(), min_size=1, max_size=3),
                       min_size=1, max_size=4))
def test_fewrel_round_trip(data):
    doc = {pid: [{"tokens": toks, "h": ["h", "Q1", [list(range(*h))]], "t": ["t", "Q2", [list(range(*t))]]}
                 for toks, h, t in items] for pid, items in data.items()}
    with tempfile.TemporaryDirectory() as tmp:
        examples = load_file(_write(Path(tmp), "val.json", json.dumps(doc).encode()), "fewrel")
    expected = [(pid, item) for pid, items in data.items() for item in items]
    for ex, (pid, (toks, h, t)) in zip(examples, expected, strict=True):
        assert ex.label == pid and ex.tokens == tuple(toks)
        assert (ex.head.start, ex.head.end, ex.tail.start, ex.tail.end) == (*h, *t)


# ------------------------------------------------------------------------ any bytes: examples or a located DataError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(
        st.sampled_from(["token", "tokens", "h", "t", "pos", "name", "relation", "label", "text", "subj_start",
                         "subj_end", "obj_start", "obj_end", "id", "type", "stanford_ner", "P1"]) | st.text(max_size=4),
        children, max_size=6),
    max_leaves=25)


def _mutate(data: bytes, draw_bytes: bytes, at: int) -> bytes:
    at = at % (len(data) + 1)
    return data[:at] + draw_bytes + data[at:]


any_input = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(json_values, max_size=5).map(lambda vs: "\n".join(json.dumps(v) for v in vs).encode()),
    st.builds(_mutate, json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=4), st.integers(0, 200)),
    st.builds(lambda toks, rel: json.dumps({"text": " ".join(toks), "label": rel}).encode(),
              st.lists(st.sampled_from(["<<", ">>", "[[", "]]", "<<x>>", "a", "b", "[[y]]", " "]), max_size=8), label),
)


@pytest.mark.parametrize("kind", ["opennre", "tacred", "chemprot", "fewrel", "semeval2010"])
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=any_input)
def test_any_bytes_give_examples_or_a_located_data_error(kind, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "split.json", data)
        for policy in ("raise", "skip"):
            try:
                examples = load_file(path, kind, on_error=policy)
            except DataError as exc:
                assert exc.path == str(path) and str(exc).startswith(str(path))
                continue
            for ex in examples:
                assert isinstance(ex, RelationExample)
                assert 0 <= ex.head.start < ex.head.end <= len(ex.tokens)
                assert 0 <= ex.tail.start < ex.tail.end <= len(ex.tokens)
                assert not ex.head.overlaps(ex.tail)
                assert ex.source.startswith(str(path))


# ------------------------------------------------------------------------ SemEval-2010 release files

# words the Treebank rules keep whole (no c/g/l/m/t/w: no "cannot", "gonna"... contractions)
release_word = st.text(alphabet="abdefhijkpqrsuvxyzABDEFHQXZ\u00e9", min_size=1, max_size=6)
release_piece = st.sampled_from(['1\t"', '7\t"', '"', "<e1>", "</e1>", "<e2>", "</e2>", "the", "Dr.", " ", ".",
                                 ",", "'s", "\r\n", "\n", "\t", "Other", "Cause-Effect(e1,e2)", "Comment:",
                                 "Comment: x", "\x92", "\xe9", "e.g.", "!", "(", ")", "--", "''"])


@st.composite
def release_files(draw):
    """Well-formed TRAIN_FILE.TXT bytes (CRLF or LF) and, per block, its number, mentions and label."""
    from recon.data_prep.loaders.semeval2010 import LABELS

    newline = draw(st.sampled_from(["\r\n", "\n"]))
    text, expected, number = [], [], 0
    for _ in range(draw(st.integers(1, 5))):
        number += draw(st.integers(1, 3))
        before, between, after = (draw(st.lists(release_word, max_size=4)) for _ in range(3))
        e1, e2 = (draw(st.lists(release_word, min_size=1, max_size=3)) for _ in range(2))
        sentence = " ".join(before + [f"<e1>{' '.join(e1)}</e1>"] + between + [f"<e2>{' '.join(e2)}</e2>"] + after)
        label = draw(st.sampled_from(LABELS))
        text.append(f'{number}\t"{sentence}."{newline}{label}{newline}Comment:{newline}{newline}')
        expected.append((number, tuple(w.lower() for w in e1), tuple(w.lower() for w in e2), label))
    return "".join(text).encode("cp1252"), expected


@SETTINGS
@given(release_files())
def test_release_blocks_round_trip(generated):
    data, expected = generated
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "TRAIN_FILE.TXT", data)
        examples = load_file(path, "semeval2010")
    assert len(examples) == len(expected)
    for ex, (number, head, tail, label) in zip(examples, expected):
        assert ex.meta["id"] == number and ex.label == label and ex.tokens[-1] == "."
        assert ex.tokens[ex.head.start:ex.head.end] == head and ex.tokens[ex.tail.start:ex.tail.end] == tail


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=64),
                      st.lists(release_piece, max_size=40).map(lambda xs: "".join(xs).encode("latin-1"))))
def test_release_like_bytes_give_examples_or_a_located_data_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "TRAIN_FILE.TXT", data)
        for policy in ("raise", "skip"):
            try:
                examples = load_file(path, "semeval2010", on_error=policy)
            except DataError as exc:
                assert exc.path == str(path) and str(exc).startswith(str(path))
                continue
            for ex in examples:
                assert 0 <= ex.head.start < ex.head.end <= len(ex.tokens) and ex.tail.end <= len(ex.tokens)
                assert not ex.head.overlaps(ex.tail) and ex.source.startswith(f"{path}:")


# ------------------------------------------------------------------------ renderers

def _example(tokens, h, t, types=("PERSON", "CITY")) -> RelationExample:
    return RelationExample(tuple(tokens), Entity(*h, type=types[0]), Entity(*t, type=types[1]), "r")


@SETTINGS
@given(sentences(), st.sampled_from(list(InputFormat)), st.booleans(), st.booleans())
def test_rendered_markers_balanced_and_entity_spans_preserved(sentence, fmt, blank_head, blank_tail):
    tokens, h, t = sentence
    ex = _example(tokens, h, t)
    out = render(ex, fmt, SPECIAL, blank_head=blank_head, blank_tail=blank_tail)
    words = list(out.words)
    for start, end in ((SPECIAL.head_start, SPECIAL.head_end), (SPECIAL.tail_start, SPECIAL.tail_end)):
        opens, closes = [i for i, w in enumerate(words) if w == start], [i for i, w in enumerate(words) if w == end]
        if fmt in (InputFormat.CM, InputFormat.ONLYM):
            assert len(opens) == len(closes) == 1 and opens[0] < closes[0]  # balanced, in order
        else:
            assert opens == closes == []
    head = words[slice(*out.head_span)]
    tail = words[slice(*out.tail_span)]
    if fmt in (InputFormat.CM, InputFormat.ONLYM):
        assert head == [SPECIAL.head_start, *([SPECIAL.head_blank] if blank_head else tokens[h[0]:h[1]]), SPECIAL.head_end]
        assert tail == [SPECIAL.tail_start, *([SPECIAL.tail_blank] if blank_tail else tokens[t[0]:t[1]]), SPECIAL.tail_end]
    elif fmt is InputFormat.ONLYC:
        assert (head, tail) == ([SPECIAL.head_blank], [SPECIAL.tail_blank])
    else:
        assert (head, tail) == ([SPECIAL.type_token("subj", "PERSON")], [SPECIAL.type_token("obj", "CITY")])
    spans = sorted([out.head_span, out.tail_span])
    assert spans[0][1] <= spans[1][0]  # the two entities' words never overlap
    if fmt in (InputFormat.CM, InputFormat.CT, InputFormat.ONLYC):  # the context is kept, in order
        (a0, a1), (b0, b1) = sorted([h, t])
        (r0, r1), (s0, s1) = spans
        assert words[:r0] == tokens[:a0] and words[r1:s0] == tokens[a1:b0] and words[s1:] == tokens[b1:]
    else:
        assert len(words) == (out.head_span[1] - out.head_span[0]) + (out.tail_span[1] - out.tail_span[0])


@SETTINGS
@given(sentences())
def test_only_c_blanks_both_mentions_and_keeps_every_context_word(sentence):
    tokens, h, t = sentence
    words = list(render(_example(tokens, h, t), InputFormat.ONLYC, SPECIAL).words)
    assert words.count(SPECIAL.head_blank) == 1 and words.count(SPECIAL.tail_blank) == 1
    inside = set(range(*h)) | set(range(*t))
    assert [w for w in words if w not in (SPECIAL.head_blank, SPECIAL.tail_blank)] == \
        [w for i, w in enumerate(tokens) if i not in inside]
    assert len(words) == len(tokens) - len(inside) + 2


# ------------------------------------------------------------------------ encoder windowing

@st.composite
def windowing(draw):
    length = draw(st.integers(2, 400))
    cut = draw(st.integers(1, length - 1))
    a0 = draw(st.integers(0, cut - 1))
    a1 = draw(st.integers(a0 + 1, cut))
    b0 = draw(st.integers(cut, length - 1))
    b1 = draw(st.integers(b0 + 1, length))
    spans = [(a0, a1), (b0, b1)]
    if draw(st.booleans()):
        spans.reverse()
    budget = draw(st.integers(2, length + 10))
    return length, spans, budget


@settings(max_examples=600, deadline=None)
@given(windowing())
def test_truncate_keeps_both_entities_whole_whenever_they_fit(case):
    length, spans, budget = case
    windows, split, cut = truncate(length, spans, budget)
    kept = [i for lo, hi in windows for i in range(lo, hi)]
    assert all(0 <= lo < hi <= length for lo, hi in windows)
    assert kept == sorted(set(kept))  # ordered, no piece twice
    assert len(kept) <= budget and (len(kept) == length if length <= budget else True)
    (a0, a1), (b0, b1) = sorted(spans)
    assert a0 in kept and b0 in kept  # the representation tokens are always there
    if (a1 - a0) + (b1 - b0) <= budget:  # both fit: both whole
        assert set(range(a0, a1)) <= set(kept) and set(range(b0, b1)) <= set(kept)
        assert not cut
        assert split == (b1 - a0 > budget)
        assert len(kept) == min(length, budget)  # and the spare room is used
    else:
        assert cut
    if length <= budget:
        assert windows == [(0, length)] and not split and not cut
