"""Paper-shaped tables from per-cell statistics, and deltas against the paper's reported numbers.

Every table is a pandas pivot of MEDIANS over seeds (x100, one decimal, as the paper prints them):
rows (dataset, model), columns (setting, format). That is the shape of Table 5 (settings 1% / 10% /
100%) and Table 6 (N-way K-shot); Table 1 is the same pivot with one dataset and one setting.
Each table is written as CSV, Markdown, HTML and LaTeX. The delta tables compare with
``resources/reported_results.csv`` (the paper's Tables 1, 5 and 6 in long form), matched on the
paper's dataset names, the model's ``compare_to`` label (BERT / MTB / CP / CNN), setting and format.

With significance results (``recon.orchestration.report.significance``) the Markdown / HTML / LaTeX tables
mark the cells whose difference from the reference is not significant (the CSV stays numeric), and
the delta tables say per cell whether the paper's number lies inside recon's seed range (``s``) and
inside the cell's 95% bootstrap interval over test examples (``i``).
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from recon.orchestration.study.trial import PAPER_DATASET_NAMES
from recon.orchestration.study.spec import FORMATS

REPORTED_FILE = "reported_results.csv"
DISPLAY_SCALE = 100.0


def reported_results() -> pd.DataFrame:
    """The paper's numbers: table, dataset, model, setting, input_format, metric, value."""
    with resources.files("recon.orchestration.report").joinpath("resources", REPORTED_FILE).open("r", encoding="utf-8") as fh:
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
                reported: Optional[pd.DataFrame] = None, intervals: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Long table: our median, the paper's value and ``delta = ours - reported`` (fractions, not %).

    ``compare_to`` maps our model names to the paper's labels; models without one are left out.
    Cells the paper does not report get ``reported = NaN``. ``in_seed_range``: the paper's number
    lies within our [min, max] over seeds; with ``intervals`` (``significance.cell_intervals``)
    ``ci_lo``/``ci_hi`` are the cell's 95% bootstrap interval and ``in_ci`` says whether it holds
    the paper's number (NaN / None where unknown).
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
    merged["seed_min"], merged["seed_max"] = merged["min"], merged["max"]
    merged["in_seed_range"] = [None if pd.isna(r) else bool(lo - 1e-9 <= r <= hi + 1e-9)
                               for r, lo, hi in zip(merged["reported"], merged["min"], merged["max"])]
    if intervals is not None and not intervals.empty:
        ci = intervals[["dataset", "setting", "format", "model", "ci_lo", "ci_hi"]]
        merged = merged.merge(ci, on=["dataset", "setting", "format", "model"], how="left")
    else:
        merged["ci_lo"], merged["ci_hi"] = float("nan"), float("nan")
    merged["in_ci"] = [None if pd.isna(r) or pd.isna(lo) else bool(lo - 1e-9 <= r <= hi + 1e-9)
                       for r, lo, hi in zip(merged["reported"], merged["ci_lo"], merged["ci_hi"])]
    cols = ["table", "dataset", "setting", "format", "model", "paper_model", "n", "median", "reported", "delta",
            "seed_min", "seed_max", "in_seed_range", "ci_lo", "ci_hi", "in_ci"]
    return merged[cols]


def delta_tables(delta: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Pivots of ``delta`` (x100: percentage points) per table, named ``<table>_delta``."""
    out = {}
    for name, group in delta.dropna(subset=["delta"]).groupby("table", sort=True):
        out[f"{name}_delta"] = pivot(group, value="delta")
    return out


def marked_table(cells: pd.DataFrame, marks: pd.DataFrame, value: str = "median") -> pd.DataFrame:
    """:func:`pivot` of ``value`` as text ("48.2", "48.2†") with ``marks`` (dataset, setting, format,
    model, mark) appended to their cells."""
    numbers = pivot(cells, value=value)
    keyed = cells.merge(marks, on=["dataset", "setting", "format", "model"], how="left") if len(marks) else \
        cells.assign(mark="")
    keyed["mark"] = keyed["mark"].fillna("")
    lookup = {(PAPER_DATASET_NAMES.get(r.dataset, r.dataset), r.model, r.setting, r.format): r.mark
              for r in keyed.itertuples(index=False)}
    text = numbers.astype(object).copy()
    for (dataset, model) in numbers.index:
        for (setting, fmt) in numbers.columns:
            v = numbers.loc[(dataset, model), (setting, fmt)]
            text.loc[(dataset, model), (setting, fmt)] = "" if pd.isna(v) else \
                f"{v:.1f}{lookup.get((dataset, model, setting, fmt), '')}"
    return text


SEED_NOTE = ("[n/N seeds]: the median is over n of the N seeds the study plans (trials failed, or are not finished "
             "or not logged yet): read it as provisional")
MARK_KEYS = ["dataset", "setting", "format", "model"]


def seed_marks(cells: pd.DataFrame) -> pd.DataFrame:
    """Marks of cells whose median is over fewer seeds than planned (``n`` < ``planned``): `` [2/3 seeds]``."""
    if "planned" not in cells.columns:
        return pd.DataFrame(columns=[*MARK_KEYS, "mark"])
    short = cells[cells["n"] < cells["planned"]]
    return pd.DataFrame({**{k: short[k].values for k in MARK_KEYS},
                         "mark": [f" [{n}/{p} seeds]" for n, p in zip(short["n"], short["planned"])]},
                        columns=[*MARK_KEYS, "mark"])


def combine_marks(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Several mark frames as one: a cell's marks joined in order (significance first, then seed counts)."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=[*MARK_KEYS, "mark"])
    joined = pd.concat(frames, ignore_index=True)
    return joined.groupby(MARK_KEYS, sort=False)["mark"].apply("".join).reset_index()


def delta_marks(delta: pd.DataFrame) -> pd.DataFrame:
    """Marks of the delta tables: ``s`` paper's number within our seed range, ``i`` within the 95% interval."""
    out = delta.dropna(subset=["delta"]).copy()
    out["mark"] = [("s" if s is True else "") + ("i" if c is True else "")
                   for s, c in zip(out["in_seed_range"], out["in_ci"])]
    return out[["dataset", "setting", "format", "model", "mark"]]


DELTA_NOTES = ["delta = recon's median - the paper's number, in points; s: the paper's number lies within recon's "
               "min..max over seeds; i: it lies within the cell's 95% bootstrap interval over test examples"]


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
    notes_md = "".join(f"\n* {note}" for note in footnotes)
    numeric = table.apply(lambda col: pd.to_numeric(col.astype(str).str.extract(r"^([-+]?\d+(?:\.\d+)?)")[0],
                                                    errors="coerce")) if table.dtypes.eq(object).any() else table
    _flat(numeric).to_csv(paths[0], index=False)
    paths[1].write_text(_flat(table).to_markdown(index=False, floatfmt=".1f") + "\n" + notes_md + ("\n" if footnotes else ""),
                        encoding="utf-8")
    notes_html = ("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in footnotes) + "</ul>") if footnotes else ""
    paths[2].write_text(table.to_html(float_format=lambda v: f"{v:.1f}", na_rep="") + notes_html, encoding="utf-8")
    notes_tex = "".join(f"% {note}\n" for note in footnotes)
    tex = table.to_latex(float_format="%.1f", na_rep="--", multicolumn=True, multirow=True, escape=True)
    tex = tex.replace("\u2020", "$^\\dagger$").replace("\u2021", "$^\\ddagger$")
    paths[3].write_text(tex + notes_tex, encoding="utf-8")
    return paths


def write_all(stats: pd.DataFrame, compare_to: Mapping[str, Optional[str]], out_dir: Path,
              footnotes: Optional[Mapping[str, Sequence[str]]] = None, *,
              significance: Optional[pd.DataFrame] = None, intervals: Optional[pd.DataFrame] = None) -> list[Path]:
    """Every table, its delta table, the long cell statistics and the long delta list.

    ``footnotes`` maps a table name (``table5``) to notes printed under it and its delta table:
    cells that could not run and why, where a training subset came from, leakage allowed.
    With ``significance`` (``significance.significance_frame``) the tables mark differences that
    are not significant; with ``intervals`` (``significance.cell_intervals``) the delta tables mark
    whether the paper's number is inside recon's interval.
    """
    from recon.orchestration.report.significance import significance_notes, table_marks

    footnotes = footnotes or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    stats.to_csv(out_dir / "cells.csv", index=False)
    written.append(out_dir / "cells.csv")
    marks = table_marks(significance) if significance is not None else None
    for name, group in stats.groupby("table", sort=True):
        partial = seed_marks(group)
        notes = [*footnotes.get(name, ()), *([SEED_NOTE] if len(partial) else [])]
        if marks is None and partial.empty:
            written += write_table(pivot(group), out_dir, name, notes)
        else:
            cell_marks = combine_marks([m for m in (marks, partial) if m is not None])
            written += write_table(marked_table(group, cell_marks), out_dir, name,
                                   [*notes, *(significance_notes() if marks is not None else [])])
    delta = delta_frame(stats, compare_to, intervals=intervals)
    delta.to_csv(out_dir / "delta_vs_reported.csv", index=False)
    written.append(out_dir / "delta_vs_reported.csv")
    for name, group in delta.dropna(subset=["delta"]).groupby("table", sort=True):
        notes = footnotes.get(name, ())
        if significance is None and intervals is None:
            written += write_table(pivot(group, value="delta"), out_dir, f"{name}_delta", notes)
        else:
            written += write_table(marked_table(group, delta_marks(group), value="delta"), out_dir,
                                   f"{name}_delta", [*notes, *DELTA_NOTES])
    return written


def analysis(context) -> list[Path]:
    """Report part: the paper-shaped tables, their delta tables and the cell statistics."""
    return write_all(context.stats, context.compare_to, context.out_dir, context.footnotes,
                     significance=context.shared.get("significance"), intervals=context.shared.get("intervals"))
