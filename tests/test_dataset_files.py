"""Bad dataset files are refused before any compute, each with one paragraph naming the file (and the record
and field where one applies), through the command line as a user meets them: exit 2, ``recon: error:``,
no traceback.

The inputs are made in ``tmp_path`` from the shared datasets (SemEval, ChemProt) and from small TACRED-format
records written here (the real TACRED is licensed and not in the data directory):

* every record of a split skipped under ``--on-error skip`` (ChemProt files read as kind ``opennre``; a SemEval
  copy next to ChemProt's rel2id.json), while a split with SOME records skipped still loads;
* a split file or ``rel2id.json`` that is a folder, or a broken link;
* gzip-compressed files, named ``train.txt.gz`` or ``train.txt``: read as if they were not compressed;
* repeated example ids in a TACRED file.
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from recon.core.errors import DataError
from recon.data_prep.registry import check_available, load_dataset
from recon.orchestration.cli.main import main

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SEMEVAL, CHEMPROT = DATA / "semeval", DATA / "chemprot"
SPLITS = ("train", "dev", "test")
LINES = 40  # lines of each shared split copied into a fixture (enough for every check, quick to parse)


def _head(source: Path, target: Path, lines: int = LINES) -> Path:
    """The first ``lines`` lines of ``source`` written to ``target``."""
    with source.open(encoding="utf-8") as handle:
        target.write_text("".join(next(handle) for _ in range(lines)), encoding="utf-8")
    return target


def _copy_splits(source: Path, target: Path, rel2id: Path | None = SEMEVAL / "rel2id.json") -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        _head(source / f"{split}.txt", target / f"{split}.txt")
    if rel2id is not None:
        shutil.copy(rel2id, target / "rel2id.json")
    return target


def _refused(argv: list[str], capsys) -> str:
    """Run ``recon argv``; it must exit 2 with one ``recon: error:`` paragraph and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("recon: error: ") and "Traceback" not in err
    assert err.count("\n") == 1, err  # one paragraph
    return err


def _ok(argv: list[str], capsys) -> str:
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.out


def _stats(argv: list[str], capsys) -> dict:
    """``recon data stats ARGV --json``, parsed."""
    return json.loads(_ok(["data", "stats", *argv, "--json"], capsys))


# ---------------------------------------------------------------- 1. every record of a split skipped

@pytest.fixture()
def chemprot_as_opennre(tmp_path: Path) -> Path:
    """ChemProt's files copied in place of SemEval's: every line lacks the ``token`` key of kind opennre."""
    return _copy_splits(CHEMPROT, tmp_path / "semeval")


@pytest.mark.parametrize("command", [
    ["data", "stats"],
    ["data", "split", "--fraction", "0.1"],
    ["finetune", "--max-train-steps", "1", "--device", "cpu"],
])
def test_a_split_with_every_record_skipped_is_an_error(chemprot_as_opennre, tmp_path, capsys, command):
    out = tmp_path / "run"
    extra = ["--out", str(out)] if command[0] == "finetune" else []
    err = _refused([*command, "--path", str(chemprot_as_opennre), "--kind", "opennre", "--on-error", "skip", *extra],
                   capsys)
    train = chemprot_as_opennre / "train.txt"
    assert f"{train}: all {LINES} records were skipped" in err
    assert "missing key" in err and "line 1, field 'token'" in err  # the first reason, located
    assert "kind 'opennre'" in err
    assert not out.exists()  # nothing written


def test_the_same_files_by_name_under_data_dir(chemprot_as_opennre, capsys):
    err = _refused(["data", "stats", "--dataset", "semeval", "--data-dir", str(chemprot_as_opennre.parent),
                    "--on-error", "skip"], capsys)
    assert f"{chemprot_as_opennre / 'train.txt'}: all {LINES} records were skipped" in err


def test_a_split_with_some_records_skipped_still_loads(tmp_path, capsys):
    directory = _copy_splits(SEMEVAL, tmp_path / "mixed")
    with (directory / "train.txt").open("a", encoding="utf-8") as handle:
        handle.write((CHEMPROT / "train.txt").open(encoding="utf-8").readline())
    out = _ok(["data", "stats", "--path", str(directory), "--kind", "opennre", "--on-error", "skip"], capsys)
    assert "skipped   1 bad record(s)" in out and f"train.txt:{LINES + 1} field 'token'" in out
    assert _stats(["--path", str(directory), "--kind", "opennre", "--on-error", "skip"], capsys)["splits"] == {
        "train": LINES, "dev": LINES, "test": LINES}


def test_every_label_outside_rel2id_is_an_error(tmp_path, capsys):
    """The records parse but rel2id.json (ChemProt's) knows none of their labels: nothing is left either."""
    directory = _copy_splits(SEMEVAL, tmp_path / "semeval", rel2id=CHEMPROT / "rel2id.json")
    err = _refused(["data", "stats", "--path", str(directory), "--kind", "opennre", "--on-error", "skip"], capsys)
    assert f"{directory / 'train.txt'}: all {LINES} records were skipped" in err
    assert str(directory / "rel2id.json") in err and "label not in rel2id" in err


def test_a_file_with_no_record_is_an_error(tmp_path, capsys):
    directory = tmp_path / "tacred"
    directory.mkdir()
    for split in SPLITS:
        (directory / f"{split}.json").write_text(json.dumps(_tacred_records(("a", "b"))))
    (directory / "train.json").write_text("[]")
    err = _refused(["data", "stats", "--path", str(directory), "--kind", "tacred"], capsys)
    assert f"{directory / 'train.json'}: holds no records" in err


# ---------------------------------------------------------------- 2. folders and broken links

def test_a_split_file_that_is_a_folder(tmp_path, capsys):
    directory = _copy_splits(SEMEVAL, tmp_path / "semeval")
    (directory / "train.txt").unlink()
    (directory / "train.txt").mkdir()
    for argv in (["--path", str(directory), "--kind", "opennre"],
                 ["--dataset", "semeval", "--data-dir", str(tmp_path)]):
        err = _refused(["data", "stats", *argv], capsys)
        assert f"{directory / 'train.txt'}: is a folder, not a file" in err
    # `data check` (file listings only) names it among the reasons it cannot run, exit 1
    assert main(["data", "check", "--dataset", "semeval", "--data-dir", str(tmp_path)]) == 1
    assert f"{directory / 'train.txt'}: is a folder, not a file" in capsys.readouterr().out


def test_a_split_file_that_is_a_broken_link(tmp_path, capsys):
    directory = _copy_splits(SEMEVAL, tmp_path / "semeval")
    (directory / "dev.txt").unlink()
    (directory / "dev.txt").symlink_to(tmp_path / "moved" / "dev.txt")
    for argv in (["--path", str(directory), "--kind", "opennre"],
                 ["--dataset", "semeval", "--data-dir", str(tmp_path)]):
        err = _refused(["data", "stats", *argv], capsys)
        assert f"{directory / 'dev.txt'}: is a broken link to {tmp_path / 'moved' / 'dev.txt'}" in err


def test_rel2id_that_is_a_folder(tmp_path, capsys):
    directory = _copy_splits(SEMEVAL, tmp_path / "semeval", rel2id=None)
    (directory / "rel2id.json").mkdir()
    for argv in (["--path", str(directory), "--kind", "opennre"],
                 ["--dataset", "semeval", "--data-dir", str(tmp_path)]):
        err = _refused(["data", "stats", *argv], capsys)
        assert f"{directory / 'rel2id.json'}: is a folder, not a file" in err


# ---------------------------------------------------------------- 3. gzip-compressed files

def _gzip(path: Path, target: Path) -> None:
    target.write_bytes(gzip.compress(path.read_bytes()))


def test_train_txt_gz_is_read(tmp_path, capsys):
    directory = _copy_splits(SEMEVAL, tmp_path / "semeval")
    _gzip(directory / "train.txt", directory / "train.txt.gz")
    (directory / "train.txt").unlink()
    plain = load_dataset(path=str(_copy_splits(SEMEVAL, tmp_path / "plain")), kind="opennre")
    for argv in (["--path", str(directory), "--kind", "opennre"],
                 ["--dataset", "semeval", "--data-dir", str(tmp_path)]):
        out = _ok(["data", "stats", *argv], capsys)
        assert f"{LINES} examples, " in out and f"({directory / 'train.txt.gz'})" in out
        assert _stats(argv, capsys)["splits"] == {"train": LINES, "dev": LINES, "test": LINES}
    gz = load_dataset("semeval", data_dir=str(tmp_path))
    assert [x.tokens for x in gz.splits["train"]] == [x.tokens for x in plain.splits["train"]]
    assert gz.files["train"] == str(directory / "train.txt.gz")
    assert check_available("semeval", str(tmp_path)) == []


def test_a_gzip_file_named_train_txt_is_read(tmp_path, capsys):
    directory = _copy_splits(SEMEVAL, tmp_path / "semeval")
    _gzip(directory / "train.txt", directory / "train.txt")
    stats = _stats(["--path", str(directory), "--kind", "opennre"], capsys)
    assert stats["splits"]["train"] == LINES and stats["files"]["train"] == str(directory / "train.txt")


def test_gzip_json_documents_are_read(tmp_path):
    """TACRED's JSON arrays and rel2id.json go through the same reader."""
    directory = tmp_path / "tacred"
    directory.mkdir()
    for split in SPLITS:
        (directory / f"{split}.json.gz").write_bytes(gzip.compress(json.dumps(_tacred_records("abc")).encode()))
    ds = load_dataset(path=str(directory), kind="tacred")
    assert {s: len(xs) for s, xs in ds.splits.items()} == {"train": 3, "dev": 3, "test": 3}
    semeval = _copy_splits(SEMEVAL, tmp_path / "semeval")
    _gzip(semeval / "rel2id.json", semeval / "rel2id.json")
    rel2id = json.loads((SEMEVAL / "rel2id.json").read_text())
    assert load_dataset(path=str(semeval), kind="opennre").labels == sorted(rel2id, key=rel2id.get)


def test_a_damaged_gzip_file_is_named(tmp_path, capsys):
    directory = _copy_splits(SEMEVAL, tmp_path / "semeval")
    data = gzip.compress((directory / "train.txt").read_bytes())
    (directory / "train.txt").unlink()
    (directory / "train.txt.gz").write_bytes(data[: len(data) // 2])
    err = _refused(["data", "stats", "--path", str(directory), "--kind", "opennre"], capsys)
    assert f"{directory / 'train.txt.gz'}: is gzip-compressed but cannot be decompressed" in err


def test_a_file_and_its_gz_copy_side_by_side_are_refused(tmp_path, capsys):
    directory = _copy_splits(SEMEVAL, tmp_path / "semeval")
    _gzip(directory / "train.txt", directory / "train.txt.gz")
    err = _refused(["data", "stats", "--path", str(directory), "--kind", "opennre"], capsys)
    assert str(directory / "train.txt") in err and str(directory / "train.txt.gz") in err


# ---------------------------------------------------------------- 4. repeated example ids (TACRED)

def _tacred_records(ids) -> list[dict]:
    return [{"id": i, "relation": "per:title" if n % 2 else "no_relation",
             "token": ["Mary", "Jones", ",", "the", "chief", "executive", "."],
             "subj_start": 0, "subj_end": 1, "obj_start": 4, "obj_end": 5, "subj_type": "PERSON", "obj_type": "TITLE"}
            for n, i in enumerate(ids)]


@pytest.fixture()
def tacred_with_repeats(tmp_path: Path) -> Path:
    directory = tmp_path / "tacred"
    directory.mkdir()
    (directory / "train.json").write_text(json.dumps(_tacred_records(["t1", "t2", "t3", "t2", "t4"])))
    (directory / "dev.json").write_text(json.dumps(_tacred_records(["d1", "d2"])))
    (directory / "test.json").write_text(json.dumps(_tacred_records(["e1", "e2"])))
    return directory


def test_repeated_tacred_ids_are_an_error(tacred_with_repeats, capsys):
    train = tacred_with_repeats / "train.json"
    for argv in (["--path", str(tacred_with_repeats), "--kind", "tacred"],
                 ["--dataset", "tacred", "--data-dir", str(tacred_with_repeats.parent)]):
        err = _refused(["data", "stats", *argv], capsys)
        assert f"{train}, record 3, field 'id': id 't2' repeats record 1" in err
    with pytest.raises(DataError) as caught:
        load_dataset(path=str(tacred_with_repeats), kind="tacred")
    assert (caught.value.path, caught.value.record, caught.value.field) == (str(train), 3, "id")


def test_repeated_tacred_ids_are_counted_under_skip(tacred_with_repeats, capsys):
    argv = ["--path", str(tacred_with_repeats), "--kind", "tacred", "--on-error", "skip"]
    out = _ok(["data", "stats", *argv], capsys)
    assert _stats(argv, capsys)["splits"] == {"train": 4, "dev": 2, "test": 2}
    assert "repeated example id (duplicate_id)" in out and f"{tacred_with_repeats / 'train.json'}#3 field 'id'" in out
