"""Registry and data directory: real datasets by name, --path/--kind, missing data explained."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recon.core.errors import DataError, DatasetNotFound, ReconError
from recon.data_prep.registry import (REGISTRY, check_available, display_name, display_names, expected_train_size,
                                      fewshot_datasets, get_spec, load_dataset, metric_of, paper_split_sizes,
                                      paper_subset_size, supervised_datasets)

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


def test_on_error_skip_reaches_every_split_and_counts_by_reason():
    ds = load_dataset(path=str(FIX / "kbp37"), kind="opennre", on_error="skip")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 5, "dev": 2, "test": 2}
    assert ds.on_error == "skip" and ds.skipped is ds.report.skipped
    assert ds.skipped == {"empty_name": 4, "name_not_found": 1, "span_out_of_range": 1, "malformed_json": 1,
                          "unknown_label": 1}
    assert ds.report.locations["empty_name"][-1] == f"{FIX / 'kbp37/dev.txt'}:2 field 't.name'"
    assert ds.report.locations["unknown_label"] == [f"{FIX / 'kbp37/train.txt'}:11 field 'relation'"]
    assert ds.report.loaded == 9 and any("skipped 8 bad record(s)" in n for n in ds.notes)
    with pytest.raises(DataError) as info:
        load_dataset(path=str(FIX / "kbp37"), kind="opennre")  # raise stays the default
    assert "kbp37/train.txt, line 3, field 'h.name'" in str(info.value)
    with pytest.raises(ReconError, match="on_error must be one of"):
        load_dataset(path=str(FIX / "kbp37"), kind="opennre", on_error="drop")
    clean = load_dataset("semeval", data_dir=str(DATA), on_error="skip")
    assert clean.skipped == {} and not any("skipped" in n for n in clean.notes)


def test_dataset_facts_have_one_home():
    assert supervised_datasets() == ("semeval", "chemprot", "wiki80", "tacred")
    assert fewshot_datasets() == ("fewrel", "fewrel-pubmed")
    assert display_names() == {"semeval": "SemEval", "chemprot": "ChemProt", "wiki80": "Wiki80", "tacred": "TACRED",
                               "fewrel": "FewRel 1.0", "fewrel-pubmed": "FewRel 2.0 DA"}
    assert display_name("mine") == "mine"
    assert {n: metric_of(n) for n in REGISTRY} == {"semeval": "micro_f1", "chemprot": "micro_f1", "wiki80": "accuracy",
                                                   "tacred": "micro_f1", "fewrel": "accuracy",
                                                   "fewrel-pubmed": "accuracy"}
    assert paper_split_sizes("semeval") == (6507, 1493, 2717) and paper_split_sizes("tacred") == (68124, 22631, 15509)
    assert paper_split_sizes("wiki80") == (39200, 5600, 11200) and paper_split_sizes("chemprot") == (4169, 2427, 3469)
    assert paper_split_sizes("fewrel") == (44800, 11200, 14000)
    assert get_spec("wiki80").paper_subset_sizes == {0.01: 400, 0.1: 3920}
    assert get_spec("tacred").paper_subset_sizes == {0.01: 703, 0.1: 6833}
    assert paper_subset_size("chemprot", 0.01) == 49 and paper_subset_size("chemprot", 1.0) == 4169
    assert paper_subset_size("chemprot", 0.05) is None
    assert expected_train_size("semeval", 0.1) == 660 and expected_train_size("semeval", 0.05) == 326
    assert get_spec("fewrel").task == "fewshot" and get_spec("semeval").task == "supervised"
    ds = load_dataset("fewrel-pubmed", data_dir=str(DATA))
    assert ds.task == "fewshot" and ds.display_name == "FewRel 2.0 DA"


def test_check_available_on_the_shared_data():
    assert check_available("semeval", str(DATA)) == []
    assert check_available("chemprot", str(DATA), split=0.05) == []
    assert check_available("fewrel", str(DATA)) == [] and check_available("fewrel-pubmed", str(DATA)) == []
    assert check_available("fewrel", str(DATA), needs=("train", "val"))[0].startswith("no train file here")
    full = check_available("wiki80", str(DATA))
    assert len(full) == 2 and full[0].startswith("no train file here") and "39,200" in full[0]
    assert full[1].startswith("no test file here") and "11,200" in full[1]
    assert check_available("wiki80", str(DATA), needs=("train", "dev"), split=0.1, split_source="paper") == []
    seeded = check_available("wiki80", str(DATA), needs=("train", "dev"), split=0.1)
    assert len(seeded) == 1 and "sample 10%" in seeded[0] and "train_0.1.txt" in seeded[0]
    other = check_available("wiki80", str(DATA), needs=("train",), split=0.05, split_source="paper")
    assert other == [f"no train_0.05 file and no train file to sample 5% from in {DATA / 'wiki80'}"]
    tacred = check_available("tacred", str(DATA))
    assert tacred == [f"no data here (LDC licence (LDC2018T24): put train/dev/test.json in {DATA / 'tacred'})"]
    assert "recon data fetch semeval" in check_available("semeval", str(DATA / "nowhere"))[0]
    assert check_available(path=str(FIX / "namesonly"), kind="opennre", needs=("train", "dev")) == []
    assert check_available(path=str(FIX / "namesonly"), kind="opennre")[0].startswith("namesonly has no 'test'")
    with pytest.raises(ReconError, match="fraction"):
        check_available("semeval", str(DATA), split=1.5)


def test_check_available_reads_no_file(monkeypatch, tmp_path):
    import recon.data_prep.registry as registry
    from recon.data_prep.loaders import _common

    def refuse(*args, **kwargs):
        raise AssertionError("check_available parsed a file")

    monkeypatch.setattr(registry, "load_file", refuse)
    monkeypatch.setattr(registry, "read_rel2id", refuse)
    monkeypatch.setattr(_common, "read_json_document", refuse)
    assert check_available("tacred", str(FIX / "tacred_nosplits"), split=0.1, split_source="paper") == []
    (tmp_path / "tacred").mkdir()
    for name in ("train.json", "dev.json"):
        (tmp_path / "tacred" / name).write_text("[]")
    (tmp_path / "tacred" / "test.json").write_text("")
    assert check_available("tacred", str(tmp_path)) == [f"test file {tmp_path / 'tacred/test.json'} is empty"]


def test_user_subset_files_are_found_for_tacred(tmp_path):
    shutil.copytree(FIX / "tacred_nosplits" / "tacred", tmp_path / "tacred")
    assert "train_0.1" not in load_dataset("tacred", data_dir=str(tmp_path)).files
    shutil.copy(FIX / "tacred" / "train.json", tmp_path / "tacred" / "train_0.1.json")
    ds = load_dataset("tacred", data_dir=str(tmp_path))
    assert ds.files["train_0.1"] == str(tmp_path / "tacred" / "train_0.1.json")
    assert ds.directory == str(tmp_path / "tacred")
