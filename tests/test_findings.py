"""The closing paragraph says what the cells show, next to the paper, including a null CP result."""
from __future__ import annotations

import pandas as pd

from recon.orchestration.report.findings import findings_paragraph


def _cells(tmp_path, rows, metric=None):
    frame = pd.DataFrame(rows, columns=["table", "dataset", "setting", "format", "model", "n", "median", "min", "max",
                                        "iqr"])
    if metric:
        frame.insert(5, "metric", metric)
    frame.to_csv(tmp_path / "cells.csv", index=False)
    return tmp_path


def test_format_order_against_the_paper_and_cp_within_the_seed_spread(tmp_path):
    rows = []
    for model, base in (("MiniLM", 0.0), ("MiniLM+CP", 0.005)):
        for fmt, value in (("C+M", 0.61), ("OnlyC", 0.52), ("OnlyM", 0.40)):
            v = value + base
            rows.append(("table5", "semeval", "10%", fmt, model, 5, v, v - 0.02, v + 0.02, 0.01))
    text = findings_paragraph(_cells(tmp_path, rows, "micro_f1"), {"MiniLM": "BERT", "MiniLM+CP": "CP"})
    # The paper's SemEval numbers are the official scorer's: the sentence names both measures.
    assert ("SemEval 10%, MiniLM (micro-F1): C+M 0.610 > OnlyC 0.520 > OnlyM 0.400, as in the paper "
            "(BERT, official score: 0.772 > 0.688 > 0.527)") in text
    assert "MiniLM+CP vs MiniLM, SemEval 10% C+M: 0.615 vs 0.610" in text and "no effect of pre-training" in text
    text = findings_paragraph(_cells(tmp_path, rows, "semeval_official"), {"MiniLM": "BERT", "MiniLM+CP": "CP"})
    assert "SemEval 10%, MiniLM (official score): C+M 0.610" in text


def test_a_wrong_order_and_a_collapsed_cell_are_said(tmp_path):
    rows = [("table5", "semeval", "10%", f, "MiniLM", 5, v, v, v, 0.0)
            for f, v in (("C+M", 0.0), ("OnlyC", 0.3), ("OnlyM", 0.2))]
    text = findings_paragraph(_cells(tmp_path, rows), {"MiniLM": "BERT"})
    assert "OnlyC 0.300 > OnlyM 0.200 > C+M 0.000, unlike in the paper" in text
    assert "collapsed to the negative class: C+M" in text
