"""How much do a study's models lean on entity names? Their test score on name-swap views against the original.

The trials of a grid with ``eval_views`` (``recon.orchestration.study.spec.GridSpec``) were also scored, after
training and with the same weights, on test views (``recon.models.train.views``): the names swapped for training
names of the same type (``swap-type``), for names never seen in training (``swap-unseen``), for any training names
(``swap-random``), or the test rendered in OnlyC (``onlyc``). Each trial's ``view_predictions.jsonl`` is paired with
its ``predictions.jsonl`` by the example's portable identity (``recon.orchestration.report.joins``).

Per cell (dataset, setting, format, model) and view:

* ``drop``: the seed-median metric on the original test minus the seed-median on the view (x100 in the
  Markdown), with its 95% interval from the paired bootstrap over examples of
  :func:`recon.orchestration.report.significance.bootstrap_medians` (one draw of examples for both, every seed);
* ``flip_share``: share of examples whose prediction changes under the view, median over seeds, and
  ``flip_share_changed`` (its bootstrap interval beside it): the same among the examples whose words the view
  changed (a swap that found no name to swap in changes nothing);
* ``seed_drop_min`` / ``seed_drop_max``: the per-seed drops, for the seed spread.

A model pre-trained by a stage (``compare_to: CP`` / ``MTB``) is compared with the study's base model
(``compare_to: BERT``) on the same view: ``diff = drop(model) - drop(base)`` with its paired-bootstrap interval
(four medians from one draw) and the flip shares side by side, in ``name_reliance_compare.csv``; the
findings (``recon.orchestration.report.findings``) say from it whether CP reduced name reliance.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from recon.data_prep.example import portable_source
from recon.orchestration.report.joins import unjoined_message
from recon.orchestration.report.significance import (ALPHA, N_BOOTSTRAP, _seed_for, bootstrap_medians,
                                                     example_counts, f1_from_counts, negative_label)
from recon.orchestration.study.trial import PAPER_DATASET_NAMES, Trial
from recon.orchestration.report.plots import save_figure

VIEW_FILE = "view_predictions.jsonl"
COLUMNS = ["dataset", "setting", "format", "model", "view", "metric", "n_examples", "n_changed", "n_unjoined",
           "n_seeds", "original", "on_view", "drop", "ci_lo", "ci_hi", "seed_drop_min", "seed_drop_max",
           "flip_share", "flip_share_changed", "flip_ci_lo", "flip_ci_hi", "n_bootstrap"]
COMPARE_COLUMNS = ["dataset", "setting", "format", "view", "model", "base", "metric", "n_examples", "drop", "base_drop",
                   "diff", "ci_lo", "ci_hi", "flip_share_changed", "base_flip_share_changed", "n_bootstrap"]
REDUCERS = ("CP", "MTB")  # paper labels of pre-trained models compared with the base model (BERT)


def read_view_predictions(path: Path) -> dict[str, dict[str, dict]]:
    """View name -> (portable identity -> ``{gold, pred, original_pred, flipped, changed, ...}``)."""
    out: dict[str, dict[str, dict]] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                source = portable_source(str(row["source"]))
                out.setdefault(row["view"], {})[source] = {**row, "source": source}
    return out


def load_view_predictions(trials: Iterable[Trial], predictions_of: Callable[..., Optional[Path]]
                          ) -> dict[str, dict[str, dict[str, dict]]]:
    """trial id -> view -> (source -> row), for every fine-tuning trial that asked for views and has them."""
    out = {}
    for trial in trials:
        if trial.kind != "finetune" or not (trial.config or {}).get("eval_views"):
            continue
        path = predictions_of(trial, VIEW_FILE)
        if path is not None and Path(path).is_file():
            out[trial.trial_id] = read_view_predictions(Path(path))
    return out


@dataclass
class ViewCell:
    """One cell's seeds on one view: original and view prediction rows per seed."""

    dataset: str
    setting: str
    format: str
    model: str
    view: str
    metric: str
    original: dict = field(default_factory=dict)  # seed -> (source -> row)
    on_view: dict = field(default_factory=dict)   # seed -> (source -> row)


def view_cells(trials: Iterable[Trial], predictions: Mapping[str, dict],
               views: Mapping[str, Mapping[str, dict]]) -> dict[tuple, ViewCell]:
    """(dataset, setting, format, model, view) -> its seeds, for trials with both original and view predictions."""
    cells: dict[tuple, ViewCell] = {}
    for t in trials:
        if t.trial_id not in predictions or t.trial_id not in views:
            continue
        for view, rows in views[t.trial_id].items():
            key = (t.dataset, t.setting, t.format, t.model, view)
            cell = cells.setdefault(key, ViewCell(t.dataset, t.setting, t.format, t.model, view, t.metric))
            cell.original[t.seed] = predictions[t.trial_id]
            cell.on_view[t.seed] = rows
    return cells


def _shared(cells: Sequence[ViewCell]) -> tuple[list[str], int]:
    """Examples every seed of every cell has in both its original and view predictions, and how many others."""
    tables = [rows for c in cells for part in (c.original, c.on_view) for rows in part.values()]
    shared, union = set(tables[0]), set(tables[0])
    for rows in tables[1:]:
        shared &= set(rows)
        union |= set(rows)
    first = next(iter(cells[0].original.values()))
    return [s for s in first if s in shared], len(union) - len(shared)


def _counts(rows_by_seed: Mapping[int, dict], sources: list[str], negative: Optional[str], metric: str) -> np.ndarray:
    return np.stack([example_counts(rows_by_seed[s], sources, negative, metric) for s in sorted(rows_by_seed)])


def _flips(cell: ViewCell, sources: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``[seeds, n]`` flipped (view prediction differs from the original's) and the ``[n]`` changed mask."""
    flips = np.array([[cell.on_view[s][x]["pred"] != cell.original[s][x]["pred"] for x in sources]
                      for s in sorted(cell.original)], dtype=float)
    first = cell.on_view[sorted(cell.on_view)[0]]
    changed = np.array([bool(first[x].get("changed", True)) for x in sources])
    return flips, changed


def _flip_interval(flips: np.ndarray, n_boot: int, seed: int, alpha: float) -> tuple[float, float]:
    """Percentile interval of the seed-median flip share over examples resampled with replacement."""
    if flips.shape[1] == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n = flips.shape[1]
    draws = rng.integers(0, n, size=(n_boot, n))
    shares = np.median(flips[:, draws].mean(axis=2), axis=0)  # [n_boot]
    lo, hi = np.percentile(shares, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _negatives(cells: Iterable[ViewCell]) -> dict[tuple, Optional[str]]:
    labels: dict[tuple, set] = {}
    metric: dict[tuple, str] = {}
    for c in cells:
        key = (c.dataset, c.setting)
        metric[key] = c.metric
        for rows in c.original.values():
            labels.setdefault(key, set()).update(x for r in rows.values() for x in (r["gold"], r["pred"]))
    return {key: negative_label(found, metric[key]) for key, found in labels.items()}


def reliance_frame(cells: Mapping[tuple, ViewCell], *, n_boot: int = N_BOOTSTRAP, alpha: float = ALPHA
                   ) -> pd.DataFrame:
    """One row per cell and view (see the module doc)."""
    negatives = _negatives(cells.values())
    rows = []
    for cell in cells.values():
        sources, unjoined = _shared([cell])
        if not sources:
            continue
        negative = negatives[(cell.dataset, cell.setting)]
        original = _counts(cell.original, sources, negative, cell.metric)
        on_view = _counts(cell.on_view, sources, negative, cell.metric)
        seed = _seed_for(cell.dataset, cell.setting, cell.format, cell.model, cell.view)
        observed, resampled = bootstrap_medians([original, on_view], n_boot, seed)
        drops = resampled[:, 0] - resampled[:, 1]
        lo, hi = np.percentile(drops, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        per_seed = f1_from_counts(original.sum(axis=1)) - f1_from_counts(on_view.sum(axis=1))
        flips, changed = _flips(cell, sources)
        flip_lo, flip_hi = _flip_interval(flips[:, changed], n_boot, seed, alpha)
        rows.append({"dataset": cell.dataset, "setting": cell.setting, "format": cell.format, "model": cell.model,
                     "view": cell.view, "metric": cell.metric, "n_examples": len(sources),
                     "n_changed": int(changed.sum()), "n_unjoined": unjoined, "n_seeds": len(cell.original),
                     "original": float(observed[0]), "on_view": float(observed[1]),
                     "drop": float(observed[0] - observed[1]), "ci_lo": float(lo), "ci_hi": float(hi),
                     "seed_drop_min": float(per_seed.min()), "seed_drop_max": float(per_seed.max()),
                     "flip_share": float(np.median(flips.mean(axis=1))),
                     "flip_share_changed": float(np.median(flips[:, changed].mean(axis=1))) if changed.any()
                     else float("nan"),
                     "flip_ci_lo": flip_lo, "flip_ci_hi": flip_hi, "n_bootstrap": n_boot})
    return pd.DataFrame(rows, columns=COLUMNS)


def compare_frame(cells: Mapping[tuple, ViewCell], compare_to: Mapping[str, Optional[str]], *,
                  n_boot: int = N_BOOTSTRAP, alpha: float = ALPHA) -> pd.DataFrame:
    """Each pre-trained model (paper label CP / MTB) against the base model (label BERT), per view:
    ``diff = drop(model) - drop(base)`` and its paired-bootstrap interval (below 0: less name reliance)."""
    base = next((name for name, label in compare_to.items() if label == "BERT"), None)
    if base is None:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    negatives = _negatives(cells.values())
    rows = []
    for (dataset, setting, fmt, model, view), cell in cells.items():
        other = cells.get((dataset, setting, fmt, base, view))
        if compare_to.get(model) not in REDUCERS or other is None:
            continue
        sources, _ = _shared([cell, other])
        if not sources:
            continue
        negative = negatives[(dataset, setting)]
        parts = [_counts(c, sources, negative, cell.metric) for c in (cell.original, cell.on_view, other.original,
                                                                       other.on_view)]
        observed, resampled = bootstrap_medians(parts, n_boot, _seed_for(dataset, setting, fmt, model, base, view))
        diffs = (resampled[:, 0] - resampled[:, 1]) - (resampled[:, 2] - resampled[:, 3])
        lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        flips_a, changed = _flips(cell, sources)
        flips_b, _ = _flips(other, sources)
        share = (lambda f: float(np.median(f[:, changed].mean(axis=1))) if changed.any() else float("nan"))
        drop_a, drop_b = float(observed[0] - observed[1]), float(observed[2] - observed[3])
        rows.append({"dataset": dataset, "setting": setting, "format": fmt, "view": view, "model": model, "base": base,
                     "metric": cell.metric, "n_examples": len(sources), "drop": drop_a, "base_drop": drop_b,
                     "diff": drop_a - drop_b, "ci_lo": float(lo), "ci_hi": float(hi),
                     "flip_share_changed": share(flips_a), "base_flip_share_changed": share(flips_b),
                     "n_bootstrap": n_boot})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def _pct(value) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}"


def write_markdown(table: pd.DataFrame, compare: pd.DataFrame, path: Path, notes: Sequence[str] = ()) -> Path:
    lines = ["# Name reliance: the test score on name-swap views against the original test", "",
             *(f"**{note}**" for note in notes), *([""] if notes else []),
             "Every trial's trained weights scored on each view of the same test examples. x100; median over seeds;",
             "drop = original - view, 95% interval from a paired bootstrap over examples (every seed per resample);",
             "flips: share of predictions that change under the view (all examples / examples the view changed,",
             "with the latter's 95% interval).", "",
             "| dataset | setting | model | format | view | n | changed | original | view | drop | 95% CI | seed spread "
             "| flips | flips (changed) | 95% CI |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {PAPER_DATASET_NAMES.get(r.dataset, r.dataset)} | {r.setting} | {r.model} | {r.format} | "
                     f"{r.view} | {r.n_examples} | {r.n_changed} | {_pct(r.original)} | {_pct(r.on_view)} | "
                     f"{_pct(r.drop)} | [{_pct(r.ci_lo)}, {_pct(r.ci_hi)}] | {_pct(r.seed_drop_min)}..{_pct(r.seed_drop_max)} "
                     f"| {_pct(r.flip_share)} | {_pct(r.flip_share_changed)} | [{_pct(r.flip_ci_lo)}, {_pct(r.flip_ci_hi)}] |")
    if len(compare):
        lines += ["", "## Pre-trained model against the base model", "",
                  "diff = drop(model) - drop(base), x100, 95% paired-bootstrap interval (below 0: the pre-trained "
                  "model relies less on names).", "",
                  "| dataset | setting | format | view | model | base | drop | base drop | diff | 95% CI | "
                  "flips (changed) | base flips (changed) |", "|---|---|---|---|---|---|---:|---:|---:|---|---:|---:|"]
        for r in compare.itertuples(index=False):
            lines.append(f"| {PAPER_DATASET_NAMES.get(r.dataset, r.dataset)} | {r.setting} | {r.format} | {r.view} | "
                         f"{r.model} | {r.base} | {_pct(r.drop)} | {_pct(r.base_drop)} | {_pct(r.diff)} | "
                         f"[{_pct(r.ci_lo)}, {_pct(r.ci_hi)}] | {_pct(r.flip_share_changed)} | "
                         f"{_pct(r.base_flip_share_changed)} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_reliance(table: pd.DataFrame, dataset: str, out_file: Path) -> Path:
    """Two panels per dataset: the drop per view with its 95% interval, and the flip share on changed examples,
    one bar per (model, format, setting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = table[table["dataset"] == dataset]
    views = list(dict.fromkeys(data["view"]))
    systems = list(dict.fromkeys(zip(data["model"], data["format"], data["setting"])))
    fig, axes = plt.subplots(1, 2, figsize=(max(6.4, 1.6 * len(views) * 2), 3.8))
    width = 0.8 / max(1, len(systems))
    for j, (model, fmt, setting) in enumerate(systems):
        part = data[(data["model"] == model) & (data["format"] == fmt) & (data["setting"] == setting)]
        part = part.set_index("view").reindex(views)
        x = np.arange(len(views)) + (j - (len(systems) - 1) / 2) * width
        label = f"{model} {fmt}" + (f" {setting}" if data["setting"].nunique() > 1 else "")
        err = np.array([(part["drop"] - part["ci_lo"]).to_numpy(), (part["ci_hi"] - part["drop"]).to_numpy()]) * 100
        axes[0].bar(x, part["drop"] * 100, width, yerr=err, capsize=3, label=label, edgecolor="black", linewidth=0.5)
        ferr = np.array([(part["flip_share_changed"] - part["flip_ci_lo"]).to_numpy(),
                         (part["flip_ci_hi"] - part["flip_share_changed"]).to_numpy()]) * 100
        axes[1].bar(x, part["flip_share_changed"] * 100, width, yerr=ferr, capsize=3, label=label,
                    edgecolor="black", linewidth=0.5)
    metric = data["metric"].iloc[0] if len(data) else "metric"
    axes[0].set_ylabel(f"drop in {metric} x100 (original - view)")
    axes[1].set_ylabel("predictions that flip, % of changed examples")
    for ax in axes:
        ax.set_xticks(range(len(views)), views)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{PAPER_DATASET_NAMES.get(dataset, dataset)}: name reliance (median over seeds, 95% bootstrap "
                 "intervals)", fontsize=9)
    return save_figure(fig, out_file)


def name_reliance_analysis(trials: Sequence[Trial], predictions: Mapping[str, dict],
                           views: Mapping[str, Mapping[str, dict]], out_dir: Path, *,
                           compare_to: Optional[Mapping[str, Optional[str]]] = None, n_boot: int = N_BOOTSTRAP,
                           log: Callable[[str], None] = print) -> list[Path]:
    """``name_reliance.csv`` / ``.md``, ``name_reliance_compare.csv`` and a plot per dataset; [] without views."""
    cells = view_cells(trials, predictions, views)
    if not cells:
        return []
    table = reliance_frame(cells, n_boot=n_boot)
    compare = compare_frame(cells, compare_to or {}, n_boot=n_boot)
    notes = []
    part = table[table["n_unjoined"] > 0]
    if len(part):
        notes.append(unjoined_message("name reliance", int(part["n_unjoined"].sum()),
                                      int((part["n_examples"] + part["n_unjoined"]).sum()),
                                      "examples of the cells' views", "not in every seed's original and view "
                                      "predictions; each row uses the examples all of them share"))
    missing = [t for t in trials if (t.config or {}).get("eval_views") and t.trial_id in predictions
               and t.trial_id not in views]
    if missing:
        notes.append(f"name reliance: {len(missing)} finished trial(s) asked for views but have no {VIEW_FILE} "
                     "(finished before their grid asked for views); left out")
    for note in notes:
        log(note)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "name_reliance.csv", out_dir / "name_reliance_compare.csv"]
    table.to_csv(paths[0], index=False)
    compare.to_csv(paths[1], index=False)
    paths.append(write_markdown(table, compare, out_dir / "name_reliance.md", notes))
    for dataset in table["dataset"].unique():
        paths.append(plot_reliance(table, dataset, out_dir / f"name_reliance_{dataset}.png"))
    return paths


def analysis(context) -> list[Path]:
    """Report part: the drop from the original test to each view and the flip shares, per model and format."""
    if not context.predictions:
        return []
    views = load_view_predictions(context.trials, context.predictions_of)
    context.shared["views"] = views  # the error browser's flip filter
    if not views:
        return []
    return name_reliance_analysis(context.trials, context.predictions, views, context.out_dir,
                                  compare_to=context.compare_to, log=context.log)


__all__ = ["analysis", "VIEW_FILE", "read_view_predictions", "load_view_predictions", "ViewCell", "view_cells",
           "reliance_frame", "compare_frame", "write_markdown", "plot_reliance", "name_reliance_analysis"]
