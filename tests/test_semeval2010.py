"""Kind ``semeval2010``: the official SemEval-2010 Task 8 release files, on hand-written fixtures.

``tests/fixtures/semeval2010`` mirrors the organisers' zip (CRLF lines, one cp1252 byte): 16 training
blocks of our own, and a test file holding three real test sentences (8001, 8377, 8821, written out
from recon's copy) plus one of ours, also as TEST_FILE.txt + TEST_FILE_KEY.TXT. Bad variants sit in
``tests/data/bad/semeval2010_*.TXT`` with the other hostile inputs.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from recon.core.errors import DataError, DatasetNotFound
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.loaders import KINDS, LAYOUTS, LoadReport, load_file, read_rel2id
from recon.data_prep.loaders._treebank import tokenize_with_offsets
from recon.data_prep.loaders.semeval2010 import LABELS, check_label, parse_sentence, split_train_dev
from recon.data_prep.registry import load_dataset
from recon.orchestration.cli.main import main

FIX = Path(__file__).parent / "fixtures" / "semeval2010"
TRAIN = FIX / "SemEval2010_task8_training" / "TRAIN_FILE.TXT"
TEST_FULL = FIX / "SemEval2010_task8_testing_keys" / "TEST_FILE_FULL.TXT"
TEST_SENTENCES = FIX / "SemEval2010_task8_testing" / "TEST_FILE.txt"
KEY = FIX / "SemEval2010_task8_testing_keys" / "TEST_FILE_KEY.TXT"
BAD = Path(__file__).parent / "data" / "bad"
SHIPPED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "semeval"
KIND = "semeval2010"


def _view(ex: RelationExample) -> tuple:
    """What must agree between two copies of one example (not where it was read from)."""
    return ex.tokens, (ex.head.start, ex.head.end), (ex.tail.start, ex.tail.end), ex.label


def _block(number: int, sentence: str, label: str = "Other", comment: str | None = "Comment:") -> str:
    return f'{number}\t"{sentence}"\r\n{label}\r\n' + (f"{comment}\r\n" if comment is not None else "") + "\r\n"


# ---------------------------------------------------------------- the fixtures as the release has them

def test_fixtures_are_crlf_with_a_cp1252_byte():
    raw = TRAIN.read_bytes()
    assert raw.count(b"\r\n") == 64 and b"\n" not in raw.replace(b"\r\n", b"")
    assert b"180\xb0C" in raw  # the degree sign as one cp1252 byte, not UTF-8
    assert all(p.read_bytes().count(b"\r\n") > 0 for p in (TEST_FULL, TEST_SENTENCES, KEY))


def test_train_file_tokens_spans_labels_and_sources():
    examples = load_file(TRAIN, KIND)
    assert len(examples) == 16 and [ex.meta["id"] for ex in examples] == list(range(1, 17))
    assert [ex.source for ex in examples] == [f"{TRAIN}:{line}" for line in range(1, 64, 4)]
    first = examples[0]
    assert first.tokens == ("the", "engine", "of", "the", "old", "tractor", "still", "runs", ".")
    assert (first.head, first.tail) == (Entity(1, 2, name="engine"), Entity(5, 6, name="tractor"))
    assert first.label == "Component-Whole(e1,e2)" and first.meta["comment"] == ""
    smoke = examples[1]  # head at the very start of the sentence, a comment kept in meta
    assert (smoke.head.start, smoke.head.end) == (0, 1) and smoke.label == "Other"
    assert smoke.meta["comment"] == "only a location"
    company = examples[2]  # 's right after </e1>
    assert company.tokens[:5] == ("the", "company", "'s", "newest", "cars")
    assert (company.head.start, company.head.end, company.tail.start, company.tail.end) == (1, 2, 4, 5)
    assert company.label == "Product-Producer(e2,e1)"
    milk = examples[3]  # a two-word head
    assert milk.tokens[milk.head.start:milk.head.end] == ("hot", "milk") and milk.head.name == "hot milk"
    geese = examples[4]  # comma right after </e2>
    assert geese.tokens[geese.tail.start:geese.tail.end + 1] == ("geese", ",")
    report = examples[5]  # quotes and brackets inside the sentence
    assert report.tokens[:9] == ("the", "report", "(", "``", "rivers", "in", "crisis", "''", ")")
    assert (report.tail.start, report.tail.end) == (11, 12)
    cause, effect = examples[6], examples[7]  # both directions of one relation
    assert (cause.label, effect.label) == ("Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)")
    assert effect.tokens[-2:] == ("rain", ".") and (effect.tail.start, effect.tail.end) == (6, 7)
    scalpel = examples[9]  # Punkt splits the period of "e.g." as NLTK did for the shipped copy
    assert scalpel.tokens[5:9] == ("scalpel", ",", "e.g", ".")
    dr = examples[11]  # ...but not that of "Dr."; n't is split off
    assert dr.tokens[:5] == ("dr.", "smith", "did", "n't", "like")
    assert examples[13].tokens[-3:] == ("at", "180\u00b0c", ".")
    bat = examples[15]  # tail at the very end, no final period
    assert bat.tokens[-1] == "bat" and bat.tail.end == len(bat.tokens)


def test_an_example_written_in_both_formats_is_the_same_example():
    """Three real test sentences: the release lines (written out by hand) and recon's shipped copy."""
    shipped = load_file(SHIPPED / "test.txt", "opennre")
    ours = {ex.meta["id"]: ex for ex in load_file(TEST_FULL, KIND)}
    for release_id, line in ((8001, 1), (8377, 2303), (8821, 245)):
        copy = shipped[line - 1]
        assert copy.source == f"{SHIPPED / 'test.txt'}:{line}"
        assert _view(ours[release_id]) == _view(copy), release_id
    assert ours[8821].tokens[6] == "``" and ours[8821].tokens[-2] == "''"  # the copy's quote tokens


def test_sentences_and_key_give_the_full_file():
    full, keyed = load_file(TEST_FULL, KIND), load_file(TEST_SENTENCES, KIND)
    assert [_view(ex) for ex in keyed] == [_view(ex) for ex in full]
    assert [ex.meta["id"] for ex in keyed] == [8001, 8377, 8500, 8821]
    assert [ex.source for ex in keyed] == [f"{TEST_SENTENCES}:{n}" for n in range(1, 5)]
    assert [ex.source for ex in full] == [f"{TEST_FULL}:{n}" for n in (1, 5, 9, 13)]


def test_labels_are_the_shipped_rel2id_in_its_order():
    assert list(LABELS) == read_rel2id(SHIPPED / "rel2id.json")
    assert LAYOUTS[KIND].labels == LABELS and LABELS[0] == "Other"


def test_lf_line_endings_load_the_same(tmp_path):
    plain = tmp_path / "TRAIN_FILE.TXT"
    plain.write_bytes(TRAIN.read_bytes().replace(b"\r\n", b"\n"))
    assert [_view(ex) for ex in load_file(plain, KIND)] == [_view(ex) for ex in load_file(TRAIN, KIND)]


# ---------------------------------------------------------------- the dataset: train/dev/test

def test_release_directory_loads_as_a_dataset_with_the_copys_dev_cut():
    ds = load_dataset(path=str(FIX), kind=KIND)
    assert {s: len(xs) for s, xs in ds.splits.items()} == {"train": 5, "dev": 11, "test": 4}
    assert ds.files["train"] == ds.files["dev"] == str(TRAIN) and ds.files["test"] == str(TEST_FULL)
    assert ds.labels == list(LABELS) and ds.negative_label == "Other" and ds.metric == "micro_f1"
    assert ds.kind == KIND and any("3/16" in note for note in ds.notes)
    # every relation's first example is dev (n < 11 here, so max(1, n*3//16) = 1); the rest is train
    assert [ex.meta["id"] for ex in ds.splits["dev"]] == list(range(1, 12))
    assert [ex.meta["id"] for ex in ds.splits["train"]] == [12, 13, 14, 15, 16]
    # test listed relation by relation, as in the copy: the two Message-Topic sentences first
    assert [ex.meta["id"] for ex in ds.splits["test"]] == [8001, 8500, 8377, 8821]


def test_test_file_with_its_key_stands_in_for_the_full_file(tmp_path):
    for path in (TRAIN, TEST_SENTENCES, KEY):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    ds = load_dataset(path=str(tmp_path), kind=KIND)
    assert ds.files["test"] == str(tmp_path / "TEST_FILE.txt")
    full = load_dataset(path=str(FIX), kind=KIND)
    assert [_view(ex) for ex in ds.splits["test"]] == [_view(ex) for ex in full.splits["test"]]


def _dummies(labels: list[str]) -> list[RelationExample]:
    return [RelationExample(("a", "b"), Entity(0, 1), Entity(1, 2), label, meta={"i": i})
            for i, label in enumerate(labels)]


def test_split_rule_reproduces_the_shipped_train_and_dev_counts():
    """Per relation, max(1, floor(n * 3/16)) to dev gives the shipped 6,507 / 1,493, label by label."""
    train = Counter(ex.label for ex in load_file(SHIPPED / "train.txt", "opennre"))
    dev = Counter(ex.label for ex in load_file(SHIPPED / "dev.txt", "opennre"))
    totals = train + dev
    assert sum(totals.values()) == 8000 and totals["Entity-Destination(e2,e1)"] == 1
    labels = [label for label, n in totals.items() for _ in range(n)]
    ours_train, ours_dev = split_train_dev(_dummies(labels))
    assert Counter(ex.label for ex in ours_dev) == dev and Counter(ex.label for ex in ours_train) == train


def test_split_rule_takes_each_relations_first_examples_in_file_order():
    labels = ["A", "B"] * 16 + ["C"]  # A and B: n = 16 -> 3 to dev; C: n = 1 -> its one example to dev
    train, dev = split_train_dev(_dummies(labels))
    assert [ex.meta["i"] for ex in dev] == [0, 2, 4, 1, 3, 5, 32]
    assert [ex.meta["i"] for ex in train][:3] == [6, 8, 10] and len(train) == 26
    assert [ex.label for ex in train] == ["A"] * 13 + ["B"] * 13  # grouped, first appearance first


# ---------------------------------------------------------------- errors: file, line, field

BAD_FILES = [
    ("semeval2010_unbalanced_tags.TXT", 5, "sentence", "bad_entity_tags", "missing </e2> tag"),
    ("semeval2010_unknown_label.TXT", 6, "label", "bad_label", "has no direction"),
    ("semeval2010_number_repeats.TXT", 5, "id", "bad_id", "sentence number 1 repeats"),
    ("semeval2010_number_decreases.TXT", 9, "id", "bad_id", "sentence number 2 does not increase"),
    ("semeval2010_no_comment.TXT", 7, "comment", "bad_block", "no 'Comment:' line"),
    ("semeval2010_unquoted.TXT", 5, "sentence", "unquoted_sentence", "double quotes"),
]


@pytest.mark.parametrize("name, line, field, reason, text", BAD_FILES)
def test_bad_block_names_file_line_and_field_and_skip_counts_it(name, line, field, reason, text):
    path = BAD / name
    with pytest.raises(DataError) as info:
        load_file(path, KIND)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)
    assert str(info.value).startswith(f"{path}, line {line}, field '{field}': ") and text in str(info.value)
    report = LoadReport()
    kept = load_file(path, KIND, on_error="skip", report=report)
    assert len(kept) == 2 and report.skipped == {reason: 1}
    assert report.locations[reason] == [f"{path}:{line} field '{field}'"]


@pytest.mark.parametrize("sentence, reason, text", [
    ("The <e1>wind</e1> shook the <e2>windows.", "bad_entity_tags", "missing </e2>"),
    ("<e1>a</e1> <e1>b</e1> <e2>c</e2>", "bad_entity_tags", "2 x <e1>"),
    ("</e1>a<e1> <e2>c</e2>", "bad_entity_tags", "closing tag comes before"),
    ("<e1>big <e2>dog</e2></e1> barked", "bad_entity_tags", "nested"),
    ("<e1> </e1> and <e2>dog</e2>", "bad_entity_tags", "empty <e1>"),
    ("<e1>a</e1> <e3>b</e3> <e2>c</e2>", "bad_entity_tags", "unexpected tag <e3>"),
    ("the <e1>apple</e1><e2>tree</e2> grew", "overlapping_entities", "overlap"),
])
def test_tag_problems(sentence, reason, text):
    from recon.data_prep.loaders._common import RecordError

    with pytest.raises(RecordError) as info:
        parse_sentence(sentence)
    assert (info.value.reason, info.value.field) == (reason, "sentence") and text in info.value.message


def test_label_lines():
    assert check_label(" Entity-Destination(e2,e1) \t") == "Entity-Destination(e2,e1)"
    from recon.data_prep.loaders._common import RecordError

    for text, words in (("other", "exactly 'Other'"), ("Cause-Effect", "no direction"),
                        ("Causes(e1,e2)", "not a SemEval-2010 label")):
        with pytest.raises(RecordError, match=words):
            check_label(text)


@pytest.mark.parametrize("content, line, field, reason", [
    (_block(1, "a <e1>b</e1> <e2>c</e2>", "Comment:", None), 2, "label", "bad_block"),  # label line lost
    (_block(1, "a <e1>b</e1> <e2>c</e2>", comment="Comment:\r\nstray words"), 4, "comment", "bad_block"),
    ('"a <e1>b</e1> <e2>c</e2>"\r\nOther\r\nComment:\r\n', 1, "id", "bad_id"),  # no number
    ("Other\r\nComment:\r\n\r\n" + _block(2, "a <e1>b</e1> <e2>c</e2>"), 1, "id", "bad_block"),  # no sentence
    (_block(1, "a <e1>b</e1> <e2>c</e2>", comment="Note: x"), 3, "comment", "bad_block"),
])
def test_block_structure_errors(tmp_path, content, line, field, reason):
    path = tmp_path / "TRAIN_FILE.TXT"
    path.write_text(content + _block(9, "d <e1>e</e1> <e2>f</e2>"), newline="")
    with pytest.raises(DataError) as info:
        load_file(path, KIND)
    assert (info.value.line, info.value.field) == (line, field) and str(path) in str(info.value)
    report = LoadReport()
    assert [ex.meta["id"] for ex in load_file(path, KIND, on_error="skip", report=report)][-1] == 9
    assert report.skipped == {reason: 1}


def test_a_missing_blank_line_between_blocks_is_tolerated(tmp_path):
    path = tmp_path / "TRAIN_FILE.TXT"
    path.write_text(_block(1, "a <e1>b</e1> <e2>c</e2>").rstrip("\r\n") + "\r\n" + _block(2, "d <e1>e</e1> <e2>f</e2>"),
                    newline="")
    assert [ex.meta["id"] for ex in load_file(path, KIND)] == [1, 2]


def test_answer_key_mismatches_and_a_missing_key(tmp_path):
    sentences = tmp_path / "TEST_FILE.txt"
    key = tmp_path / "TEST_FILE_KEY.TXT"
    sentences.write_text('8001\t"a <e1>b</e1> <e2>c</e2>"\r\n8002\t"d <e1>e</e1> <e2>f</e2>"\r\n', newline="")
    key.write_text("8001\tOther\r\n8003\tCause-Effect(e1,e2)\r\n", newline="")
    with pytest.raises(DataError) as info:
        load_file(sentences, KIND)
    assert (info.value.path, info.value.line, info.value.field) == (str(sentences), 2, "label")
    assert "8002 has no line in" in str(info.value)
    report = LoadReport()
    assert [ex.label for ex in load_file(sentences, KIND, on_error="skip", report=report)] == ["Other"]
    assert report.skipped == {"unmatched_key": 2}
    assert report.locations["unmatched_key"] == [f"{sentences}:2 field 'label'", f"{key}:2 field 'id'"]
    key.unlink()
    with pytest.raises(DataError, match="TEST_FILE_KEY.TXT") as info:
        load_file(sentences, KIND)
    assert info.value.path == str(sentences)


def test_files_that_are_not_release_text(tmp_path):
    empty = tmp_path / "empty.TXT"
    empty.write_bytes(b"\r\n\r\n")
    with pytest.raises(DataError, match="empty"):
        load_file(empty, KIND)
    utf16 = tmp_path / "utf16.TXT"
    utf16.write_bytes(TRAIN.read_bytes().decode("cp1252").encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16") as info:
        load_file(utf16, KIND)
    assert info.value.line == 1
    with pytest.raises(DataError, match="use --kind opennre") as info:  # recon's copy given to this kind
        load_file(SHIPPED / "test.txt", KIND)
    assert info.value.line == 1


# ---------------------------------------------------------------- the wrong kind, and the CLI

def test_release_files_given_to_a_json_kind_say_which_kind_to_use():
    for path in (TRAIN, TEST_SENTENCES, KEY):
        with pytest.raises(DataError) as info:
            load_file(path, "opennre")
        assert info.value.line == 1 and "malformed JSON" in str(info.value)
        assert "SemEval-2010 Task 8 release" in str(info.value) and "use --kind semeval2010" in str(info.value)
    with pytest.raises(DataError) as info:  # under skip every line is skipped: refused, the hint quoted
        load_file(TRAIN, "chemprot", on_error="skip")
    assert "records were skipped" in str(info.value) and "use --kind semeval2010" in str(info.value)
    with pytest.raises(DatasetNotFound, match="use --kind semeval2010"):
        load_dataset(path=str(FIX), kind="opennre")
    with pytest.raises(DatasetNotFound, match="train/dev/test files"):
        load_dataset(path=str(SHIPPED), kind=KIND)


def test_cli_stats_on_the_release_and_the_wrong_kind(capsys):
    from recon.orchestration.cli.commands import data as data_cmd

    assert KIND in KINDS and data_cmd.KINDS == tuple(KINDS)  # one list of kinds: the loader registry
    assert main(["data", "stats", "--path", str(FIX), "--kind", KIND, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"] == {"train": 5, "dev": 11, "test": 4} and out["relations"] == 19
    assert out["negative_label"] == "Other" and out["kind"] == KIND
    assert main(["data", "stats", "--path", str(FIX), "--kind", "opennre"]) == 2
    assert "use --kind semeval2010" in capsys.readouterr().err


# ---------------------------------------------------------------- the tokeniser

@pytest.mark.parametrize("text, tokens", [
    ("Dr. Smith met U.S. troops at 5 p.m. today.", ["Dr.", "Smith", "met", "U.S.", "troops", "at", "5", "p.m.",
                                                  "today", "."]),
    ("Fig. 1 shows it, e.g. here (etc.).", ["Fig", ".", "1", "shows", "it", ",", "e.g", ".", "here", "(", "etc",
                                           ".", ")", "."]),
    ('He shouted "Stop thief!" and ran.', ["He", "shouted", "``", "Stop", "thief", "!", "''", "and", "ran", "."]),
    ('She said "hi!".', ["She", "said", "``", "hi", "!", "``", "."]),
    ("It cannot be Arnold S. Juliano's.", ["It", "can", "not", "be", "Arnold", "S.", "Juliano", "'s", "."]),
])
def test_tokeniser_follows_nltk_word_tokenize(text, tokens):
    out = tokenize_with_offsets(text)
    assert [t for t, _, _ in out] == tokens
    for token, start, end in out:
        assert text[start:end] == token or (token in ("``", "''") and text[start:end] == '"')
