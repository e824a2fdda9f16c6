"""``recon data stats|split|render`` through orchestration.cli.main."""
from __future__ import annotations

import json
from pathlib import Path

from recon.orchestration.cli.main import main

DATA = str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
FIX = Path(__file__).parent / "fixtures" / "data"


def test_stats_semeval(capsys):
    assert main(["data", "stats", "--dataset", "semeval", "--data-dir", DATA, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"] == {"train": 6507, "dev": 1493, "test": 2717}
    assert out["negative_label"] == "Other" and out["relations"] == 19 and out["metric"] == "micro_f1"
    assert main(["data", "stats", "--dataset", "semeval", "--data-dir", DATA]) == 0
    text = capsys.readouterr().out
    assert "6,507" in text and "1,493" in text and "2,717" in text and "Other" in text


def test_stats_wiki80_reports_missing(capsys):
    assert main(["data", "stats", "--dataset", "wiki80", "--data-dir", DATA, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"] == {"dev": 5600} and out["missing"] == ["train", "test"]
    assert out["paper_sizes"] == {"train": 39200, "test": 11200} and out["metric"] == "accuracy"


def test_split_json_and_paper(capsys):
    assert main(["data", "split", "--dataset", "semeval", "--data-dir", DATA, "--fraction", "0.01",
                 "--seed", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["size"] == 73 and sum(out["per_relation"].values()) == 73 and out["seed"] == 3
    assert main(["data", "split", "--dataset", "chemprot", "--data-dir", DATA, "--fraction", "0.1",
                 "--seed", "3", "--split-source", "paper", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == 423


def test_render_cm_and_ct(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    assert main(["data", "render", "--dataset", "semeval", "--data-dir", DATA, "--format", "C+M", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "[CLS] the original [unused0] play [unused1] was filled" in out and "[SEP]" in out
    assert main(["data", "render", "--path", str(FIX / "tacred"), "--kind", "tacred", "--format", "OnlyT",
                 "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "head type PERSON (source: annotation)" in out and "tail type TITLE (source: annotation)" in out


def test_errors_are_one_paragraph(capsys):
    assert main(["data", "stats", "--dataset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recon: error: unknown dataset 'nope'") and "Traceback" not in err
    assert main(["data", "render", "--dataset", "semeval", "--data-dir", DATA, "--format", "XX"]) == 2
    assert "unknown input format" in capsys.readouterr().err
    assert main(["data", "stats", "--path", str(FIX / "badlabel"), "--kind", "opennre"]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "field 'relation'" in err and len(err.strip().splitlines()) == 1
    assert main(["data", "stats", "--dataset", "tacred", "--data-dir", DATA]) == 2
    assert "LDC" in capsys.readouterr().err


def test_on_error_skip_shows_counts_and_raise_names_the_record(capsys):
    kbp = str(FIX / "kbp37")
    assert main(["data", "stats", "--path", kbp, "--kind", "opennre", "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "skipped   8 bad record(s)" in out
    assert "     4  empty entity name (empty_name): " in out and f"{kbp}/train.txt:3 field 'h.name'" in out
    assert main(["data", "stats", "--path", kbp, "--kind", "opennre", "--on-error", "skip", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["skipped"] == {"empty_name": 4, "name_not_found": 1, "span_out_of_range": 1,
                                  "malformed_json": 1, "unknown_label": 1}
    assert payload["on_error"] == "skip" and payload["skipped_total"] == 8
    assert payload["skip_locations"]["malformed_json"] == [f"{kbp}/test.txt:2"]
    for argv in (["stats"], ["split", "--fraction", "0.5"], ["render", "--format", "C+M"]):
        assert main(["data", *argv, "--path", kbp, "--kind", "opennre"]) == 2
        err = capsys.readouterr().err
        assert f"{kbp}/train.txt, line 3, field 'h.name'" in err and "empty name" in err
    assert main(["data", "split", "--path", kbp, "--kind", "opennre", "--fraction", "0.5", "--on-error", "skip",
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["size"] == 4 and payload["skipped"]["empty_name"] == 4


def test_split_reports_the_source_used(capsys):
    assert main(["data", "split", "--dataset", "semeval", "--data-dir", DATA, "--fraction", "0.05",
                 "--split-source", "paper", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "paper" and out["source_used"] == "seeded" and out["fell_back"] is True
    assert out["size"] == 335 and "no train_0.05 file" in out["note"]
    assert main(["data", "split", "--dataset", "tacred", "--data-dir", str(FIX / "tacred_nosplits"),
                 "--fraction", "0.1", "--split-source", "paper"]) == 0
    text = capsys.readouterr().out
    assert "5 training examples at fraction 0.1 (seeded, seed 42)" in text and "fell back" in text


def test_check_lists_why_a_cell_cannot_run(capsys):
    assert main(["data", "check", "--dataset", "semeval", "--data-dir", DATA]) == 0
    assert "runnable" in capsys.readouterr().out
    assert main(["data", "check", "--dataset", "wiki80", "--data-dir", DATA, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["runnable"] is False and [r.split(" (")[0] for r in out["reasons"]] == ["no train file here",
                                                                                      "no test file here"]
    assert main(["data", "check", "--dataset", "wiki80", "--data-dir", DATA, "--fraction", "0.1",
                 "--split-source", "paper", "--needs", "train", "dev"]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "tacred", "--data-dir", DATA]) == 1
    assert "LDC licence" in capsys.readouterr().out
