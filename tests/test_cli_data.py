"""``recon data stats|split|render`` through orchestration.cli.main."""
from __future__ import annotations

import json
from pathlib import Path

from recon.orchestration.cli import main

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
