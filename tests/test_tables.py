"""Paper-shaped pivots, deltas against the reported numbers, written artifacts, plots and the pilot."""
import json

import numpy as np
import pytest
import pandas as pd

from recon.orchestration.report.aggregate import cell_stats
from recon.orchestration.report.pilot import compare, pilot_analysis
from recon.orchestration.study.trial import Trial
from recon.orchestration.report.plots import plot_all
from recon.orchestration.report.tables import delta_frame, paper_tables, reported_results, write_all


def _stats():
    rows = []
    rng = np.random.default_rng(0)
    for setting in ("10%", "1%", "100%"):
        for fmt in ("OnlyM", "C+M", "OnlyC"):
            for model in ("BERT", "CP"):
                for seed in range(42, 47):
                    rows.append({"table": "table5", "dataset": "semeval", "setting": setting, "format": fmt,
                                 "model": model, "seed": seed, "metric": "micro_f1", "value": rng.random()})
    return cell_stats(pd.DataFrame(rows))


def test_reported_copy_has_the_papers_cells():
    rep = reported_results()
    assert len(rep) == 195 and set(rep["table"]) == {"table1", "table5", "table6"}
    row = rep[(rep.dataset == "SemEval") & (rep.model == "CP") & (rep.setting == "1%") & (rep.input_format == "C+M")]
    assert row["value"].item() == 0.482


def test_pivot_is_paper_shaped_and_ordered():
    stats = _stats()
    table = paper_tables(stats)["table5"]
    assert list(table.columns.get_level_values(0).unique()) == ["1%", "10%", "100%"]
    assert list(table.columns.get_level_values(1)[:3]) == ["C+M", "OnlyC", "OnlyM"]
    assert list(table.index) == [("SemEval", "BERT"), ("SemEval", "CP")]
    cell = stats[(stats.setting == "10%") & (stats.format == "OnlyC") & (stats.model == "CP")]["median"].item()
    assert table.loc[("SemEval", "CP"), ("10%", "OnlyC")] == round(cell * 100, 1)


def test_delta_against_reported():
    stats = _stats()
    delta = delta_frame(stats, {"BERT": "BERT", "CP": "CP"})
    row = delta[(delta.setting == "1%") & (delta.format == "C+M") & (delta.model == "CP")].iloc[0]
    assert row["reported"] == 0.482 and np.isclose(row["delta"], row["median"] - 0.482)
    assert delta["reported"].notna().all() and len(delta) == 18
    # A model with no paper label is left out of the comparison.
    assert set(delta_frame(stats, {"BERT": "BERT", "CP": None})["model"]) == {"BERT"}


def test_written_artifacts_and_plot(tmp_path):
    stats = _stats()
    files = write_all(stats, {"BERT": "BERT", "CP": "CP"}, tmp_path)
    names = {f.name for f in files}
    for ext in ("csv", "md", "html", "tex"):
        assert f"table5.{ext}" in names and f"table5_delta.{ext}" in names
    assert "1\\%" in (tmp_path / "table5.tex").read_text()  # LaTeX-escaped percent
    md = (tmp_path / "table5.md").read_text().splitlines()
    header = [cell.strip() for cell in md[0].strip("|").split("|")]
    assert header[:3] == ["dataset", "model", "1% C+M"] and len(md) == 4
    png = plot_all(stats, tmp_path)
    assert [p.name for p in png] == ["plot_semeval.png"] and png[0].read_bytes()[:4] == b"\x89PNG"


def test_pilot_agreement_figures(tmp_path):
    a = {str(i): {"gold": g, "pred": p} for i, (g, p) in enumerate([("x", "x"), ("y", "y"), ("x", "y"), ("y", "x"), ("x", "x")])}
    b = {str(i): {"gold": g, "pred": p} for i, (g, p) in enumerate([("x", "x"), ("y", "x"), ("x", "y"), ("y", "y"), ("x", "y")])}
    figures, only_a, only_b = compare(a, b)
    # A right on 0,1,4; B right on 0,3 -> shared 1 of 3; A wrong on 2,3: B repeats A's wrong label on 2 only.
    assert figures["shared_correct"] == 1 / 3 and figures["same_wrong"] == 0.5
    assert [x["source"] for x in only_a] == ["1", "4"] and [x["source"] for x in only_b] == ["3"]

    def trial(fmt):
        return Trial(trial_id=fmt, kind="finetune", tables=("t",), dataset="semeval", setting="1%", format=fmt,
                     model="BERT", seed=42, config={})

    for fmt, preds in (("C+M", a), ("OnlyC", b)):
        (tmp_path / f"{fmt}.jsonl").write_text("".join(json.dumps({"source": k, **v}) + "\n" for k, v in preds.items()))
    files = pilot_analysis([trial("C+M"), trial("OnlyC")], lambda t: tmp_path / f"{t.format}.jsonl", tmp_path / "out")
    pairs = pd.read_csv(files[0])
    assert pairs.loc[0, "format_b"] == "OnlyC" and np.isclose(pairs.loc[0, "shared_correct"], 1 / 3)
    assert len((tmp_path / "out" / "pilot_examples.jsonl").read_text().splitlines()) == 3


def test_tables_mark_non_significant_differences_and_the_papers_interval(tmp_path):
    from recon.orchestration.report.significance import MARK_FORMAT, MARK_MODEL

    stats = _stats()
    base = {"dataset": "semeval", "setting": "1%", "metric": "micro_f1", "significant": False, "p_value": 0.4}
    sig = pd.DataFrame([
        {**base, "comparison": "model", "fixed": "C+M", "model_a": "CP", "format_a": "C+M", "model_b": "BERT",
         "format_b": "C+M"},
        {**base, "comparison": "format", "fixed": "BERT", "model_a": "BERT", "format_a": "OnlyM", "model_b": "BERT",
         "format_b": "C+M"},
        {**base, "comparison": "format", "fixed": "BERT", "model_a": "BERT", "format_a": "OnlyC", "model_b": "BERT",
         "format_b": "C+M", "significant": True, "p_value": 0.001},
    ])
    cp = stats[(stats.setting == "1%") & (stats.format == "C+M") & (stats.model == "CP")].iloc[0]
    intervals = pd.DataFrame([{"dataset": "semeval", "setting": "1%", "format": "C+M", "model": "CP",
                               "ci_lo": 0.40, "ci_hi": 0.50}])
    write_all(stats, {"BERT": "BERT", "CP": "CP"}, tmp_path, significance=sig, intervals=intervals)
    md = (tmp_path / "table5.md").read_text()
    row = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()[2:4]}
    assert row["CP"][2] == f"{cp['median'] * 100:.1f}{MARK_MODEL}"          # 1% C+M: CP ~ BERT
    assert row["BERT"][4].endswith(MARK_FORMAT) and not row["BERT"][3].endswith(MARK_FORMAT)  # OnlyM ~ C+M; OnlyC not
    assert "not significantly different" in md and "$^\\dagger$" in (tmp_path / "table5.tex").read_text()
    numeric = pd.read_csv(tmp_path / "table5.csv")
    assert numeric.loc[1, "1% C+M"] == pytest.approx(round(cp["median"] * 100, 1))  # the CSV stays numeric
    delta = pd.read_csv(tmp_path / "delta_vs_reported.csv")
    d = delta[(delta.setting == "1%") & (delta.format == "C+M") & (delta.model == "CP")].iloc[0]
    assert d["in_ci"] == (0.40 <= 0.482 <= 0.50) and d["in_seed_range"] == (cp["min"] <= 0.482 <= cp["max"])
    assert "s: the paper's number lies within" in (tmp_path / "table5_delta.md").read_text()
