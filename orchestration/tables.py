"""Paper-shaped tables from per-cell statistics, and deltas against the paper's reported numbers.

Every table is a pandas pivot of MEDIANS over seeds (x100, one decimal, as the paper prints them):
rows (dataset, model), columns (setting, format). That is the shape of Table 5 (settings 1% / 10% /
100%) and Table 6 (N-way K-shot); Table 1 is the same pivot with one dataset and one setting.
Each table is written as CSV, Markdown, HTML and LaTeX. The delta tables compare with
``resources/reported_results.csv`` (the paper's Tables 1, 5 and 6 in long form), matched on the
paper's dataset names, the model's ``compare_to`` label (BERT / MTB / CP / CNN), setting and format.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from .plan import PAPER_DATASET_NAMES
from .spec import FORMATS

REPORTED_FILE = "reported_results.csv"
DISPLAY_SCALE = 100.0


def reported_results() -> pd.DataFrame:
    """The paper's numbers: table, dataset, model, setting, input_format, metric, value."""
    with resources.files("recon.orchestration").joinpath("resources", REPORTED_FILE).open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh)


def setting_order(setting: str) -> tuple[int, float, float]:
    """1% < 10% < 100%, then 5-way 1-shot < 5-way 5-shot < 10-way 1-shot < 10-way 5-shot."""
    if setting.endswith("%"):
        return (0, float(setting[:-1]), 0.0)
    match = re.fullmatch(r"(\d+)-way (\d+)-shot", setting)
    if match:
        return (1, float(match.group(1)), float(match.group(2)))
    return (2, 0.0, 0.0)


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    settings = sorted(frame["setting"].unique(), key=setting_order)
    formats = [f for f in FORMATS if f in set(frame["format"])] + sorted(set(frame["format"]) - set(FORMATS))
    frame["setting"] = pd.Categorical(frame["setting"], settings, ordered=True)
    frame["format"] = pd.Categorical(frame["format"], formats, ordered=True)
    frame["dataset"] = frame["dataset"].map(lambda d: PAPER_DATASET_NAMES.get(d, d))
    return frame


def pivot(cells: pd.DataFrame, value: str = "median", scale: float = DISPLAY_SCALE) -> pd.DataFrame:
    """Rows (dataset, model) x columns (setting, format) of ``value``, scaled and rounded to 0.1."""
    frame = _ordered(cells)
    model_order = list(dict.fromkeys(cells["model"]))
    table = frame.pivot_table(index=["dataset", "model"], columns=["setting", "format"], values=value,
                              aggfunc="first", observed=True, sort=True)
    table = table.reindex(sorted(table.index, key=lambda ix: (ix[0], model_order.index(ix[1]) if ix[1] in model_order else 99)))
    return (table * scale).round(1)


def paper_tables(stats: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One pivot of medians per table named in the study (``table1``, ``table5``, ``table6``...)."""
    return {name: pivot(group) for name, group in stats.groupby("table", sort=True)}


def delta_frame(stats: pd.DataFrame, compare_to: Mapping[str, Optional[str]],
                reported: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Long table: our median, the paper's value and ``delta = ours - reported`` (fractions, not %).

    ``compare_to`` maps our model names to the paper's labels; models without one are left out.
    Cells the paper does not report get ``reported = NaN``.
    """
    reported = reported_results() if reported is None else reported
    paper = reported.drop_duplicates(["dataset", "model", "setting", "input_format"])
    paper = paper.rename(columns={"model": "paper_model", "input_format": "format", "value": "reported",
                                  "dataset": "paper_dataset"})[["paper_dataset", "paper_model", "setting", "format", "reported"]]
    ours = stats.copy()
    ours["paper_model"] = ours["model"].map(lambda m: compare_to.get(m))
    ours = ours.dropna(subset=["paper_model"])
    ours["paper_dataset"] = ours["dataset"].map(lambda d: PAPER_DATASET_NAMES.get(d, d))
    merged = ours.merge(paper, on=["paper_dataset", "paper_model", "setting", "format"], how="left")
    merged["delta"] = merged["median"] - merged["reported"]
    cols = ["table", "dataset", "setting", "format", "model", "paper_model", "n", "median", "reported", "delta"]
    return merged[cols]


def delta_tables(delta: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Pivots of ``delta`` (x100: percentage points) per table, named ``<table>_delta``."""
    out = {}
    for name, group in delta.dropna(subset=["delta"]).groupby("table", sort=True):
        out[f"{name}_delta"] = pivot(group, value="delta")
    return out


def _flat(table: pd.DataFrame) -> pd.DataFrame:
    """Columns joined to one level ("1% C+M") and the index as ordinary columns."""
    flat = table.copy()
    flat.columns = [" ".join(str(p) for p in c) if isinstance(c, tuple) else str(c) for c in flat.columns]
    return flat.reset_index()


def write_table(table: pd.DataFrame, out_dir: Path, name: str, footnotes: Sequence[str] = ()) -> list[Path]:
    """``name.csv``, ``name.md``, ``name.html`` and ``name.tex`` in ``out_dir``; footnotes under the table."""
    import html

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{ext}" for ext in ("csv", "md", "html", "tex")]
    _flat(table).to_csv(paths[0], index=False)
    notes_md = "".join(f"\n* {note}" for note in footnotes)
    paths[1].write_text(_flat(table).to_markdown(index=False, floatfmt=".1f") + "\n" + notes_md + ("\n" if footnotes else ""),
                        encoding="utf-8")
    notes_html = ("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in footnotes) + "</ul>") if footnotes else ""
    paths[2].write_text(table.to_html(float_format=lambda v: f"{v:.1f}", na_rep="") + notes_html, encoding="utf-8")
    notes_tex = "".join(f"% {note}\n" for note in footnotes)
    paths[3].write_text(table.to_latex(float_format="%.1f", na_rep="--", multicolumn=True, multirow=True, escape=True)
                        + notes_tex, encoding="utf-8")
    return paths


def write_all(stats: pd.DataFrame, compare_to: Mapping[str, Optional[str]], out_dir: Path,
              footnotes: Optional[Mapping[str, Sequence[str]]] = None) -> list[Path]:
    """Every table, its delta table, the long cell statistics and the long delta list.

    ``footnotes`` maps a table name (``table5``) to notes printed under it and its delta table:
    cells that could not run and why, where a training subset came from, leakage allowed.
    """
    footnotes = footnotes or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    stats.to_csv(out_dir / "cells.csv", index=False)
    written.append(out_dir / "cells.csv")
    for name, table in paper_tables(stats).items():
        written += write_table(table, out_dir, name, footnotes.get(name, ()))
    delta = delta_frame(stats, compare_to)
    delta.to_csv(out_dir / "delta_vs_reported.csv", index=False)
    written.append(out_dir / "delta_vs_reported.csv")
    for name, table in delta_tables(delta).items():
        written += write_table(table, out_dir, name, footnotes.get(name.removesuffix("_delta"), ()))
    return written
