"""Loaders on the real benchmark files (exact MANIFEST counts) and on bad-input fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

from recon.core.errors import DataError
from recon.data_prep.loaders import LoadReport, find_negative, load_file, read_rel2id
from recon.data_prep.loaders.chemprot import split_markers

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
FIX = Path(__file__).parent / "fixtures" / "data"

REAL = [
    ("semeval/train.txt", "opennre", 6507, 18), ("semeval/dev.txt", "opennre", 1493, 19),
    ("semeval/test.txt", "opennre", 2717, 19), ("semeval/train_0.01.txt", "opennre", 73, 18),
    ("semeval/train_0.1.txt", "opennre", 660, 18), ("chemprot/train.txt", "chemprot", 4169, 13),
    ("chemprot/dev.txt", "chemprot", 2427, 12), ("chemprot/test.txt", "chemprot", 3469, 12),
    ("chemprot/train_0.01.txt", "chemprot", 49, 13), ("chemprot/train_0.1.txt", "chemprot", 423, 13),
    ("wiki80/dev.txt", "opennre", 5600, 80), ("wiki80/train_0.01.txt", "opennre", 400, 80),
    ("wiki80/train_0.1.txt", "opennre", 3920, 80), ("fewrel/val_wiki.json", "fewrel", 11200, 16),
    ("fewrel/val_pubmed.json", "fewrel", 1000, 10),
]


@pytest.mark.parametrize("rel, kind, count, labels", REAL)
def test_real_files_load_with_exact_counts_and_no_skips(rel, kind, count, labels):
    report = LoadReport()
    examples = load_file(DATA / rel, kind, errors="skip", report=report)
    assert report.total_skipped == 0, report.first_error
    assert len(examples) == count
    assert len({ex.label for ex in examples}) == labels
    for ex in examples:
        assert 0 <= ex.head.start < ex.head.end <= len(ex.tokens)
        assert 0 <= ex.tail.start < ex.tail.end <= len(ex.tokens)
        assert not ex.head.overlaps(ex.tail)
    assert examples[0].source.startswith(str(DATA / rel))


def test_wiki80_uses_pos_not_name_and_keeps_annotation():
    examples = load_file(DATA / "wiki80/dev.txt", "opennre")
    first = examples[0]
    assert first.tokens[first.head.start:first.head.end] == ("Bud", "Frye", "Field")
    assert (first.head.type, first.head.type_source, first.head.kb_id) == ("ORG", "annotation", "Q14692752")
    assert "\n " in first.tokens and "\u00a0" in first.tokens
    disagree = [ex for ex in examples if " ".join(ex.tokens[ex.head.start:ex.head.end]).lower() != ex.head.name]
    assert len(disagree) == 241  # MANIFEST: head names disagree with pos on 241 dev lines
    assert any(ex.head.type == "UNK" or ex.tail.type == "UNK" for ex in examples)


def test_semeval_has_no_types_and_exclusive_ends():
    ex = load_file(DATA / "semeval/train.txt", "opennre")[0]
    assert ex.tokens[ex.head.start:ex.head.end] == ("play",) and ex.head.type is None
    assert ex.tokens[ex.tail.start:ex.tail.end] == ("humor",)


def test_chemprot_head_is_angle_marker_even_when_second():
    examples = load_file(DATA / "chemprot/train.txt", "chemprot")
    ex = examples[0]
    assert ex.tokens[ex.head.start:ex.head.end] == ("Epidermal", "growth", "factor", "receptor")
    assert ex.tokens[ex.tail.start:ex.tail.end] == ("gefitinib",)
    assert not any("<<" in "".join(e.tokens) or "[[" in " ".join(e.tokens) for e in examples[:50])
    # a literal "[[" inside the << >> chemical name is not taken for the tail marker
    test = load_file(DATA / "chemprot/test.txt", "chemprot")[611]
    assert test.tokens[test.tail.start:test.tail.end][:1] == ("beta",)
    assert test.head.start < test.tail.start and "[" in test.tokens[test.head.start:test.head.end]


def test_chemprot_literal_brackets_and_unspaced_markers():
    tokens, head, tail = split_markers(
        "We found << Panx1 >> currents: [[ carbenoxolone ]] > acid 94 >> probenecid >> flufenamic acid.")
    assert tokens[head.start:head.end] == ["Panx1"] and tokens[tail.start:tail.end] == ["carbenoxolone"]
    examples = load_file(FIX / "chemprot_ok.txt", "chemprot")
    ex = examples[0]
    assert ex.tokens[ex.head.start:ex.head.end] == ("aspirin",)
    assert ex.tokens[ex.tail.start:ex.tail.end] == ("COX", "-", "2")
    assert "drug" in ex.tokens and "blocks" in ex.tokens
    ex2 = examples[1]
    assert ex2.tokens[ex2.head.start:ex2.head.end] == ("aspirin",) and ex2.tail.start == 0


def test_tacred_inclusive_ends_are_converted():
    examples = load_file(FIX / "tacred/train.json", "tacred")
    first, second, third = examples
    assert (first.head.start, first.head.end) == (0, 2)
    assert first.tokens[first.tail.start:first.tail.end] == ("president",)
    assert second.tokens[second.tail.start:second.tail.end] == ("John", "Smith", "Jr")
    assert (second.head.type, second.head.type_source) == ("ORGANIZATION", "annotation")
    assert second.pos[0] == "NNP" and second.ner[7] == "DATE"
    assert third.tail.start < third.head.start
    assert first.source.endswith("train.json#0") and third.meta["id"] == "t3"


def test_opennre_name_only_entities_are_matched():
    first, second = load_file(FIX / "namesonly/train.txt", "opennre")
    assert (first.head.start, first.head.end) == (4, 6)
    assert (first.tail.start, first.tail.end) == (0, 2)
    assert (second.head.start, second.head.end) == (0, 1)
    assert (second.tail.start, second.tail.end) == (7, 8)  # tail avoids the head's match


def test_fewrel_first_occurrence_and_relation_names():
    examples = load_file(DATA / "fewrel/val_wiki.json", "fewrel")
    ex = examples[0]
    assert ex.label == "P177" and ex.meta["relation_name"] == "crosses"
    assert (ex.head.start, ex.head.end, ex.head.kb_id) == (26, 29, "Q5034838")
    ok = load_file(FIX / "fewrel_ok.json", "fewrel")
    assert (ok[1].tail.start, ok[1].tail.end) == (1, 2)


BAD = [
    ("malformed.txt", "opennre", "line 2", None, "malformed JSON"),
    ("out_of_range.txt", "opennre", "line 1", "t.pos", "out of range"),
    ("reversed.txt", "opennre", "line 1", "h.pos", "reversed"),
    ("overlap.txt", "opennre", "line 1", "t", "overlap"),
    ("empty_tokens.txt", "opennre", "line 1", "token", "empty token list"),
    ("missing_key.txt", "opennre", "line 2", "relation", "missing key"),
    ("wrong_type.txt", "opennre", "line 1", "h", "expected"),
    ("array_in_jsonl.txt", "opennre", "line 1", None, "JSON array"),
    ("name_not_found.txt", "opennre", "line 1", "h.name", "does not occur"),
    ("chemprot_missing.txt", "chemprot", "line 2", "text", "missing opening head marker"),
    ("chemprot_unbalanced.txt", "chemprot", "line 1", "text", "unbalanced head markers"),
    ("chemprot_nested.txt", "chemprot", "line 1", "text", "nested"),
    ("fewrel_container.json", "fewrel", "record P1", "P1", "expected a list"),
    ("fewrel_gap.json", "fewrel", "record P1[0]", "t[2]", "not contiguous"),
    ("tacred_dict.json", "tacred", None, None, "expects a JSON array"),
    ("tacred_out_of_range.json", "tacred", "record 0", "obj_start/obj_end", "out of range"),
]


@pytest.mark.parametrize("name, kind, where, field, text", BAD)
def test_bad_input_names_file_location_and_field(name, kind, where, field, text):
    path = FIX / "bad" / name
    with pytest.raises(DataError) as info:
        load_file(path, kind)
    message = str(info.value)
    assert str(path) in message and text in message
    if where:
        assert where in message
    if field:
        assert f"field '{field}'" in message


def test_skip_policy_counts_per_reason():
    report = LoadReport()
    examples = load_file(FIX / "bad/malformed.txt", "opennre", errors="skip", report=report)
    assert [ex.label for ex in examples] == ["r1", "r2"]
    assert report.skipped == {"malformed_json": 1} and report.loaded == 2
    report = LoadReport()
    assert load_file(FIX / "bad/missing_key.txt", "opennre", errors="skip", report=report)[0].label == "r1"
    assert report.skipped == {"missing_key": 1}
    with pytest.raises(DataError):  # a whole-file problem stops even in skip mode
        load_file(FIX / "bad/array_in_jsonl.txt", "opennre", errors="skip")


def test_rel2id_order_and_negative_by_name():
    labels = read_rel2id(DATA / "semeval/rel2id.json")
    assert labels[0] == "Other" and labels[18] == "Entity-Destination(e2,e1)" and len(labels) == 19
    assert find_negative(["a", "no_relation", "b"]) == "no_relation"
    assert find_negative(["NA", "x"]) == "NA" and find_negative(["x", "na"]) == "na"
    assert find_negative(read_rel2id(DATA / "chemprot/rel2id.json")) is None
    assert find_negative(["r1", "Other"]) == "Other"  # by name, not by id 0


def test_kbp37_style_skip_counts_by_reason_with_locations():
    """Names-only entities, a few empty: ``skip`` keeps the rest and says what was dropped and where."""
    path = FIX / "kbp37/train.txt"
    report = LoadReport()
    examples = load_file(path, "opennre", report=report, on_error="skip")
    assert len(examples) == 6  # 11 lines: 3 empty names, 1 name not found, 1 span out of range
    assert report.skipped == {"empty_name": 3, "name_not_found": 1, "span_out_of_range": 1}
    assert report.skipped_by_description == {"empty entity name": 3, "entity name not found in the tokens": 1,
                                             "span out of range": 1}
    assert report.locations["empty_name"] == [f"{path}:3 field 'h.name'", f"{path}:5 field 't.name'",
                                              f"{path}:6 field 'h.name'"]
    assert report.locations["span_out_of_range"] == [f"{path}:8 field 't.pos'"]
    assert "empty name" in report.first_error["empty_name"] and "line 3" in report.first_error["empty_name"]
    first = examples[0]
    assert first.tokens[first.head.start:first.head.end] == ("John", "Smith")
    lines = report.summary_lines()
    assert lines[0].split()[0] == "3" and "empty entity name (empty_name)" in lines[0] and f"{path}:3" in lines[0]


def test_kbp37_style_raise_names_file_line_and_field():
    path = FIX / "kbp37/train.txt"
    with pytest.raises(DataError) as info:
        load_file(path, "opennre")  # raise is the default
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 3, "h.name")
    assert str(info.value).startswith(f"{path}, line 3, field 'h.name': ") and "empty name" in str(info.value)
    with pytest.raises(DataError):
        load_file(path, "opennre", on_error="raise")


def test_policy_names_and_old_keyword():
    report = LoadReport()
    assert len(load_file(FIX / "kbp37/train.txt", "opennre", "skip", report)) == 6  # old positional `errors`
    assert report.total_skipped == 5
    with pytest.raises(ValueError, match="on_error must be one of"):
        load_file(FIX / "kbp37/train.txt", "opennre", on_error="ignore")
    with pytest.raises(ValueError, match="disagree"):
        load_file(FIX / "kbp37/train.txt", "opennre", errors="raise", on_error="skip")


def test_report_keeps_only_the_first_locations():
    from recon.data_prep.loaders._common import MAX_LOCATIONS

    a, b = LoadReport(), LoadReport()
    for i in range(MAX_LOCATIONS + 2):
        a.add_skip("empty_name", f"a.txt:{i}", "m")
    b.add_skip("empty_name", "b.txt:1", "m")
    b.merge(a)
    assert b.skipped == {"empty_name": MAX_LOCATIONS + 3} and len(b.locations["empty_name"]) == MAX_LOCATIONS
    assert b.locations["empty_name"][0] == "b.txt:1" and b.summary_lines()[0].endswith(" ...")
