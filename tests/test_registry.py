"""Registry and data directory: real datasets by name, --path/--kind, missing data explained."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recon.data_prep.errors import DataError, DatasetNotFound, ReconError
from recon.data_prep.registry import load_dataset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
FIX = Path(__file__).parent / "fixtures" / "data"


def test_semeval_bundle():
    ds = load_dataset("semeval", data_dir=str(DATA))
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6507, "dev": 1493, "test": 2717}
    assert ds.negative_label == "Other" and ds.label2id()["Other"] == 0 and len(ds.labels) == 19
    assert ds.metric == "micro_f1" and ds.max_length == 100
    assert set(ds.files) == {"train", "dev", "test", "rel2id", "train_0.01", "train_0.1"}


def test_chemprot_and_fewrel_bundles():
    chem = load_dataset("chemprot", data_dir=str(DATA))
    assert [len(chem.splits[s]) for s in ("train", "dev", "test")] == [4169, 2427, 3469]
    assert chem.negative_label is None and len(chem.labels) == 13 and chem.labels[0] == "INHIBITOR"
    few = load_dataset("fewrel", data_dir=str(DATA))
    assert len(few.splits["val"]) == 11200 and few.metric == "accuracy" and few.max_length == 128
    assert few.missing == ["train"] and "train_wiki.json not available locally" in few.notes[0]
    pub = load_dataset("fewrel-pubmed", data_dir=str(DATA))
    assert len(pub.splits["val"]) == 1000 and len(pub.labels) == 10


def test_wiki80_missing_splits_are_notes_not_crashes():
    ds = load_dataset("wiki80", data_dir=str(DATA))
    assert list(ds.splits) == ["dev"] and len(ds.splits["dev"]) == 5600
    assert ds.missing == ["train", "test"] and ds.metric == "accuracy" and ds.negative_label is None
    assert any("39,200" in n for n in ds.notes) and any("11,200" in n for n in ds.notes)
    assert len(ds.labels) == 80


def test_env_var_and_default_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("RECON_DATA_DIR", str(DATA))
    monkeypatch.chdir(tmp_path)  # the repository fallback still works, but the env var wins
    assert len(load_dataset("semeval").splits["train"]) == 6507
    monkeypatch.delenv("RECON_DATA_DIR")
    assert len(load_dataset("semeval").splits["dev"]) == 1493  # ../shared/datasets from the repo root


def test_tacred_missing_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFound) as info:
        load_dataset("tacred", data_dir=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "tacred") in message and "LDC" in message and "--path" in message
    with pytest.raises(DatasetNotFound, match="recon data fetch chemprot"):
        load_dataset("chemprot", data_dir=str(tmp_path))


def test_tacred_by_name_and_by_path(tmp_path):
    shutil.copytree(FIX / "tacred", tmp_path / "tacred")
    ds = load_dataset("tacred", data_dir=str(tmp_path))
    assert ds.negative_label == "no_relation" and ds.metric == "micro_f1"
    assert len(ds.splits["train"]) == 3 and ds.missing == ["test"]
    ds2 = load_dataset(path=str(FIX / "tacred"), kind="tacred")
    assert len(ds2.splits["dev"]) == 1 and ds2.labels == ["no_relation", "org:founded", "per:title"]


def test_path_kind_detects_extensions_and_names_only(tmp_path):
    ds = load_dataset(path=str(FIX / "namesonly"), kind="opennre")
    assert set(ds.splits) == {"train", "dev"} and ds.negative_label == "NA"
    shutil.copy(FIX / "namesonly/train.txt", tmp_path / "train.jsonl")
    assert len(load_dataset(path=str(tmp_path), kind="opennre").splits["train"]) == 2
    with pytest.raises(ReconError, match="--kind"):
        load_dataset(path=str(tmp_path))
    with pytest.raises(DatasetNotFound):
        load_dataset(path=str(FIX / "bad"), kind="opennre")


def test_label_missing_from_rel2id():
    with pytest.raises(DataError) as info:
        load_dataset(path=str(FIX / "badlabel"), kind="opennre")
    message = str(info.value)
    assert "badlabel/train.txt" in message and "line 2" in message and "field 'relation'" in message
    ds = load_dataset(path=str(FIX / "badlabel"), kind="opennre", errors="skip")
    assert len(ds.splits["train"]) == 1 and ds.report.skipped == {"unknown_label": 1}
    assert ds.labels == ["r1", "Other"] and ds.negative_label == "Other"  # by name, not id 0


def test_unknown_dataset():
    with pytest.raises(ReconError, match="known datasets"):
        load_dataset("semeval2")
