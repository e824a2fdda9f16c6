"""Per-cell statistics over seeds: the paper reports the MEDIAN of five seeds (Appendix B).

A cell is (table, dataset, setting, format, model); we keep min / max / quartiles / IQR next to
the median so a reader sees how much the seeds disagree, which the paper does not show.
"""
from __future__ import annotations

import pandas as pd

CELL = ["table", "dataset", "setting", "format", "model"]
STATS = ["n", "median", "min", "max", "q1", "q3", "iqr"]


def cell_stats(results: pd.DataFrame, value: str = "value", keys: list[str] | None = None) -> pd.DataFrame:
    """One row per cell: ``n`` seeds, ``median``, ``min``, ``max``, ``q1``, ``q3``, ``iqr`` of ``value``.

    Rows whose value is missing (a trial without that metric) are left out of the statistics.
    Quartiles use linear interpolation (pandas' default), so for five seeds q1/q3 are the 2nd/4th values.
    """
    keys = keys or CELL
    data = results.dropna(subset=[value])
    if data.empty:
        return pd.DataFrame(columns=keys + ["metric"] + STATS)
    grouped = data.groupby(keys, sort=False)[value]
    stats = grouped.agg(n="count", median="median", min="min", max="max")
    stats["q1"] = grouped.quantile(0.25)
    stats["q3"] = grouped.quantile(0.75)
    stats["iqr"] = stats["q3"] - stats["q1"]
    stats["n"] = stats["n"].astype(int)
    out = stats.reset_index()
    if "metric" in data.columns:
        metric = data.groupby(keys, sort=False)["metric"].first().reset_index(drop=True)
        out.insert(len(keys), "metric", metric.values)
    return out
