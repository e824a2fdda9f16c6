"""Medians, quartiles and IQR per cell on synthetic metrics."""
import numpy as np
import pandas as pd

from recon.orchestration.report.aggregate import cell_stats


def _rows(values, **cell):
    base = {"table": "table5", "dataset": "semeval", "setting": "1%", "format": "C+M", "model": "BERT",
            "metric": "micro_f1"}
    return [{**base, **cell, "seed": 42 + i, "value": v} for i, v in enumerate(values)]


def test_median_min_max_iqr_per_cell():
    frame = pd.DataFrame(_rows([0.50, 0.10, 0.30, 0.90, 0.20]) + _rows([0.6, 0.8], format="OnlyC"))
    stats = cell_stats(frame).set_index("format")
    cm = stats.loc["C+M"]
    assert cm["n"] == 5 and cm["median"] == 0.30 and cm["min"] == 0.10 and cm["max"] == 0.90
    assert np.isclose(cm["q1"], 0.20) and np.isclose(cm["q3"], 0.50) and np.isclose(cm["iqr"], 0.30)
    onlyc = stats.loc["OnlyC"]
    assert onlyc["n"] == 2 and np.isclose(onlyc["median"], 0.7) and np.isclose(onlyc["iqr"], 0.1)
    assert set(stats["metric"]) == {"micro_f1"}


def test_missing_values_are_left_out_not_counted_as_zero():
    frame = pd.DataFrame(_rows([0.4, None, 0.6]))
    row = cell_stats(frame).iloc[0]
    assert row["n"] == 2 and np.isclose(row["median"], 0.5)


def test_median_matches_numpy_on_random_cells():
    rng = np.random.default_rng(7)
    rows = []
    for fmt in ("C+M", "OnlyC", "OnlyM"):
        rows += _rows(list(rng.random(5)), format=fmt)
    frame = pd.DataFrame(rows)
    stats = cell_stats(frame).set_index("format")
    for fmt, group in frame.groupby("format"):
        assert np.isclose(stats.loc[fmt, "median"], np.median(group["value"]))
        assert np.isclose(stats.loc[fmt, "iqr"], np.subtract(*np.percentile(group["value"], [75, 25])))
