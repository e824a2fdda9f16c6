"""Are two cells of a table really different? A paired bootstrap over test examples, with every seed.

What is compared
----------------
A *cell* is (dataset, setting, format, model); its number in the paper-shaped tables is the MEDIAN
over seeds of the test metric. Two cells are compared when a table puts them side by side:

* ``model``:  every pair of models within one dataset / setting / format (a column of Table 5);
* ``format``: every pair of input formats within one model / dataset / setting (a row of Table 1).

Both cells were scored on the same test examples (matched by their portable identity,
``recon.orchestration.report.joins``), so the comparison is paired: a hard example is hard for both.
An example some of the compared trials have and others lack is left out of that comparison, counted
(``n_unjoined``), logged and noted in ``significance.md``.

Which test, and why a bootstrap
-------------------------------
We use a **paired bootstrap over examples** (Efron & Tibshirani; Koehn 2004; Berg-Kirkpatrick et al.
2012). One resample draws n test examples with replacement (the same draw for both cells and all
their seeds), recomputes every seed's metric on it, takes the median over seeds per cell, and
records ``delta* = median_A* - median_B*``. From B resamples:

* the **95% interval** of the delta is the 2.5 / 97.5 percentiles of ``delta*``;
* the **p-value** (two-sided, H0: delta = 0) is the share of resamples whose delta* lies at least
  as far from the observed delta as the observed delta lies from 0 (the "shifted" bootstrap null,
  ``(1 + #{|delta* - delta| >= |delta|}) / (B + 1)``).

An approximate randomisation test (swap A's and B's predictions per example) would give a p-value
only; the issue also asks for the delta's interval, and the bootstrap gives both from the same
resamples, for the same statistic the tables print (a median over seeds). The interval covers
test-set sampling only: seed-to-seed variation is reported next to it (``seed_delta_min/max``:
paired per seed where both cells have that seed; each cell's min/max over seeds), because with
five seeds a bootstrap over seeds would be too coarse to mean much.

Micro-F1 is not a mean of per-example scores, so it is never averaged: each example contributes
three counts (``correct``: a non-negative prediction equal to the gold label; ``predicted``: a
non-negative prediction; ``gold``: a non-negative gold label), a resample is a vector of example
multiplicities ``w``, and ``F1 = 2 (w.correct) / (w.predicted + w.gold)``, exactly
``recon.models.train.metrics.micro_f1`` on the resampled list. The negative class (``Other``,
``no_relation``, ``NA``; found by name) counts in neither predicted nor gold; with no negative
class or for accuracy datasets every example counts in both and the same formula is accuracy.
SemEval's official score (macro-F1 over relation types) is resampled the same way, with the three
counts kept per relation type (``recon.models.train.metrics.example_counts``): each type's F1 is
recomputed from its summed counts and averaged, as the official scorer does.

A difference is *significant* when ``p < 0.05`` (the 95% interval then almost always excludes 0).
Tables mark the cells whose comparison with the reference (the first model of the column; the
model's C+M in the row) is NOT significant; ``significance.csv`` lists every comparison.
"""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from recon.models.train.metrics import SEMEVAL_OFFICIAL, score_from_counts
from recon.models.train.metrics import example_counts as metric_counts

from recon.orchestration.report.joins import read_predictions, unjoined_message
from recon.orchestration.study.trial import Trial

ALPHA = 0.05
N_BOOTSTRAP = 1000
CHUNK = 100  # resamples per matrix product (memory: CHUNK x n_examples counts)
REFERENCE_FORMAT = "C+M"
MARK_MODEL = "\u2020"   # dagger: not significantly different from the column's reference model
MARK_FORMAT = "\u2021"  # double dagger: not significantly different from the same model's C+M
NEGATIVE_NAMES = ("other", "no_relation", "na")

COLUMNS = ["dataset", "setting", "comparison", "fixed", "model_a", "format_a", "model_b", "format_b",
           "metric", "n_examples", "n_unjoined", "n_seeds_a", "n_seeds_b", "median_a", "median_b", "delta", "ci_lo", "ci_hi",
           "p_value", "significant", "seed_delta_min", "seed_delta_max", "a_seed_min", "a_seed_max",
           "b_seed_min", "b_seed_max", "n_bootstrap", "test"]
CELL_COLUMNS = ["dataset", "setting", "format", "model", "metric", "n_examples", "n_unjoined", "n_seeds", "median",
                "ci_lo", "ci_hi", "seed_min", "seed_max"]


def load_predictions(trials: Iterable[Trial], predictions_of: Callable[[Trial], Optional[Path]]
                     ) -> dict[str, dict[str, dict]]:
    """trial id -> (source -> prediction row) for every fine-tuning trial whose predictions exist."""
    out = {}
    for trial in trials:
        if trial.kind != "finetune":
            continue
        path = predictions_of(trial)
        if path is not None and Path(path).is_file():
            out[trial.trial_id] = read_predictions(Path(path))
    return out


def negative_label(labels: Iterable[str], metric: str) -> Optional[str]:
    """The negative class by name (never by position); None for accuracy datasets."""
    if metric == "accuracy":
        return None
    for label in sorted(set(labels)):
        if label.strip().lower() in NEGATIVE_NAMES:
            return label
    return None


def example_counts(rows: Mapping[str, dict], sources: Sequence[str], negative: Optional[str],
                   metric: str = "micro_f1") -> np.ndarray:
    """``[n, K, 3]`` float array of (correct, predicted, gold) per example and class group, in ``sources``
    order (``recon.models.train.metrics.example_counts``; K=1 but for SemEval's official score)."""
    mode = metric if metric == SEMEVAL_OFFICIAL else ("accuracy" if negative is None else "micro_f1")
    counts, _ = metric_counts([rows[s]["gold"] for s in sources], [rows[s]["pred"] for s in sources], mode,
                              negative)
    return counts


f1_from_counts = score_from_counts  # summed counts [..., K, 3] -> the metric


def _seed_for(*parts: str) -> int:
    return zlib.crc32("\t".join(parts).encode("utf-8"))


def bootstrap_medians(cells: Sequence[np.ndarray], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Observed and resampled seed-medians of several cells on the same examples.

    ``cells[i]`` is ``[seeds_i, n, K, 3]`` (counts per seed, example and class group). Returns ``observed
    [cells]`` and ``resampled [n_boot, cells]``, every resample drawing the same examples for every cell
    and seed.
    """
    n, groups = cells[0].shape[1], cells[0].shape[2]
    observed = np.array([np.median(f1_from_counts(c.sum(axis=1)), axis=0) for c in cells])
    rng = np.random.default_rng(seed)
    flat = np.concatenate([c.transpose(1, 0, 2, 3).reshape(n, -1) for c in cells], axis=1)  # [n, sum(seeds)*K*3]
    out = np.empty((n_boot, len(cells)))
    done = 0
    while done < n_boot:
        size = min(CHUNK, n_boot - done)
        draws = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        weights = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)
        sums = weights @ flat
        col = 0
        for i, c in enumerate(cells):
            k = c.shape[0]
            part = sums[:, col:col + 3 * groups * k].reshape(size, k, groups, 3)
            out[done:done + size, i] = np.median(f1_from_counts(part), axis=1)
            col += 3 * groups * k
        done += size
    return observed, out


def p_value(observed: float, resampled: np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0 delta = 0 (shifted null, add-one smoothing)."""
    extreme = np.sum(np.abs(resampled - observed) >= abs(observed) - 1e-12)
    return float((1 + extreme) / (len(resampled) + 1))


@dataclass
class Cell:
    dataset: str
    setting: str
    format: str
    model: str
    metric: str
    seeds: dict  # seed -> trial id


def _cells(trials: Iterable[Trial], predictions: Mapping[str, dict]) -> dict[tuple, Cell]:
    cells: dict[tuple, Cell] = {}
    for t in trials:
        if t.kind != "finetune" or t.trial_id not in predictions:
            continue
        key = (t.dataset, t.setting, t.format, t.model)
        cell = cells.setdefault(key, Cell(t.dataset, t.setting, t.format, t.model, t.metric, {}))
        cell.seeds[t.seed] = t.trial_id
    return cells


def _shared_sources(predictions: Mapping[str, dict], trial_ids: Iterable[str]) -> tuple[list[str], int]:
    """The examples every trial has (file order of the first trial), and how many others some trials have."""
    ids = list(trial_ids)
    shared = set(predictions[ids[0]])
    union = set(predictions[ids[0]])
    for tid in ids[1:]:
        shared &= set(predictions[tid])
        union |= set(predictions[tid])
    return [s for s in predictions[ids[0]] if s in shared], len(union) - len(shared)


def _counts(cell: Cell, predictions: Mapping[str, dict], sources: list[str], negative: Optional[str]) -> np.ndarray:
    return np.stack([example_counts(predictions[cell.seeds[s]], sources, negative, cell.metric)
                     for s in sorted(cell.seeds)])


def _group_negative(cells: Iterable[Cell], predictions: Mapping[str, dict]) -> Optional[str]:
    cells = list(cells)
    labels = {label for c in cells for tid in c.seeds.values() for r in predictions[tid].values()
              for label in (r["gold"], r["pred"])}
    return negative_label(labels, cells[0].metric)


def compare_cells(a: Cell, b: Cell, predictions: Mapping[str, dict], *, comparison: str, fixed: str,
                  negative: Optional[str], n_boot: int = N_BOOTSTRAP, alpha: float = ALPHA) -> Optional[dict]:
    """One row of ``significance.csv`` (None when the cells share no test example)."""
    sources, unjoined = _shared_sources(predictions, [*a.seeds.values(), *b.seeds.values()])
    if not sources:
        return None
    ca, cb = _counts(a, predictions, sources, negative), _counts(b, predictions, sources, negative)
    seed = _seed_for(a.dataset, a.setting, a.format, a.model, b.format, b.model)
    observed, resampled = bootstrap_medians([ca, cb], n_boot, seed)
    delta = float(observed[0] - observed[1])
    deltas = resampled[:, 0] - resampled[:, 1]
    lo, hi = np.percentile(deltas, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    pval = p_value(delta, deltas)
    fa, fb = f1_from_counts(ca.sum(axis=1)), f1_from_counts(cb.sum(axis=1))
    by_seed_a = dict(zip(sorted(a.seeds), fa))
    by_seed_b = dict(zip(sorted(b.seeds), fb))
    paired = [by_seed_a[s] - by_seed_b[s] for s in by_seed_a if s in by_seed_b]
    return {"dataset": a.dataset, "setting": a.setting, "comparison": comparison, "fixed": fixed,
            "model_a": a.model, "format_a": a.format, "model_b": b.model, "format_b": b.format, "metric": a.metric,
            "n_examples": len(sources), "n_unjoined": unjoined, "n_seeds_a": len(a.seeds), "n_seeds_b": len(b.seeds),
            "median_a": float(observed[0]), "median_b": float(observed[1]), "delta": delta,
            "ci_lo": float(lo), "ci_hi": float(hi), "p_value": pval, "significant": bool(pval < alpha),
            "seed_delta_min": float(min(paired)) if paired else float("nan"),
            "seed_delta_max": float(max(paired)) if paired else float("nan"),
            "a_seed_min": float(fa.min()), "a_seed_max": float(fa.max()),
            "b_seed_min": float(fb.min()), "b_seed_max": float(fb.max()),
            "n_bootstrap": n_boot, "test": "paired bootstrap over examples (median over seeds)"}


def significance_frame(trials: Sequence[Trial], predictions: Mapping[str, dict], *, n_boot: int = N_BOOTSTRAP,
                       alpha: float = ALPHA) -> pd.DataFrame:
    """Every model pair per (dataset, setting, format) and every format pair per (dataset, setting, model).

    ``A`` is the later model / format in the plan's order (so ``delta = later - earlier``, e.g.
    ``CP - BERT`` and ``OnlyC - C+M``); ``B`` is the reference the tables mark against.
    """
    cells = _cells(trials, predictions)
    model_order = list(dict.fromkeys(t.model for t in trials))
    format_order = list(dict.fromkeys(t.format for t in trials))
    if REFERENCE_FORMAT in format_order:
        format_order.remove(REFERENCE_FORMAT)
        format_order.insert(0, REFERENCE_FORMAT)
    rows = []
    groups: dict[tuple, dict[tuple, Cell]] = {}
    for key, cell in cells.items():
        groups.setdefault((cell.dataset, cell.setting), {})[(cell.format, cell.model)] = cell
    for (dataset, setting), group in groups.items():
        negative = _group_negative(group.values(), predictions)
        for fmt in format_order:
            models = [m for m in model_order if (fmt, m) in group]
            for ref, other in itertools.combinations(models, 2):
                row = compare_cells(group[(fmt, other)], group[(fmt, ref)], predictions, comparison="model",
                                    fixed=fmt, negative=negative, n_boot=n_boot, alpha=alpha)
                if row:
                    rows.append(row)
        for model in model_order:
            formats = [f for f in format_order if (f, model) in group]
            for ref, other in itertools.combinations(formats, 2):
                row = compare_cells(group[(other, model)], group[(ref, model)], predictions, comparison="format",
                                    fixed=model, negative=negative, n_boot=n_boot, alpha=alpha)
                if row:
                    rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def cell_intervals(trials: Sequence[Trial], predictions: Mapping[str, dict], *, n_boot: int = N_BOOTSTRAP,
                   alpha: float = ALPHA) -> pd.DataFrame:
    """Per cell: the seed-median metric, its 95% bootstrap interval over examples, and the seed range."""
    cells = _cells(trials, predictions)
    negatives: dict[tuple, Optional[str]] = {}
    rows = []
    for cell in cells.values():
        group = (cell.dataset, cell.setting)
        if group not in negatives:
            negatives[group] = _group_negative([c for c in cells.values() if (c.dataset, c.setting) == group],
                                               predictions)
        sources, unjoined = _shared_sources(predictions, cell.seeds.values())
        if not sources:
            continue
        counts = _counts(cell, predictions, sources, negatives[group])
        observed, resampled = bootstrap_medians([counts], n_boot,
                                                _seed_for(cell.dataset, cell.setting, cell.format, cell.model))
        lo, hi = np.percentile(resampled[:, 0], [100 * alpha / 2, 100 * (1 - alpha / 2)])
        per_seed = f1_from_counts(counts.sum(axis=1))
        rows.append({"dataset": cell.dataset, "setting": cell.setting, "format": cell.format, "model": cell.model,
                     "metric": cell.metric, "n_examples": len(sources), "n_unjoined": unjoined,
                     "n_seeds": len(cell.seeds),
                     "median": float(observed[0]), "ci_lo": float(lo), "ci_hi": float(hi),
                     "seed_min": float(per_seed.min()), "seed_max": float(per_seed.max())})
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def table_marks(significance: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, setting, format, model): the marks of comparisons with the reference that are NOT significant.

    ``MARK_MODEL`` on a model that does not differ significantly from the column's first model,
    ``MARK_FORMAT`` on a format that does not differ significantly from the same model's C+M.
    """
    rows = []
    if significance is None or significance.empty:
        return pd.DataFrame(columns=["dataset", "setting", "format", "model", "mark"])
    models = significance[significance["comparison"] == "model"]
    for (dataset, setting, fmt), group in models.groupby(["dataset", "setting", "fixed"], sort=False):
        reference = _reference(group)
        for r in group.itertuples(index=False):
            if r.model_b == reference and not r.significant:
                rows.append({"dataset": dataset, "setting": setting, "format": fmt, "model": r.model_a,
                             "mark": MARK_MODEL})
    formats = significance[significance["comparison"] == "format"]
    for r in formats.itertuples(index=False):
        if r.format_b == REFERENCE_FORMAT and not r.significant:
            rows.append({"dataset": r.dataset, "setting": r.setting, "format": r.format_a, "model": r.model_a,
                         "mark": MARK_FORMAT})
    marks = pd.DataFrame(rows, columns=["dataset", "setting", "format", "model", "mark"])
    if marks.empty:
        return marks
    return marks.groupby(["dataset", "setting", "format", "model"], sort=False)["mark"].apply(
        lambda m: "".join(sorted(set(m)))).reset_index()


def _reference(group: pd.DataFrame) -> str:
    """The column's reference model: the one that is never ``A`` (the first in the plan's order)."""
    firsts = [m for m in dict.fromkeys(group["model_b"]) if m not in set(group["model_a"])]
    return firsts[0] if firsts else group["model_b"].iloc[0]


def significance_notes() -> list[str]:
    return [f"{MARK_MODEL}: not significantly different from the first model of the column "
            f"(paired bootstrap over test examples, median over seeds, p >= {ALPHA})",
            f"{MARK_FORMAT}: not significantly different from the same model's {REFERENCE_FORMAT} "
            f"(same test); every comparison with its 95% interval: significance.csv"]


def unjoined_note(significance: pd.DataFrame) -> Optional[str]:
    """The console line (and ``significance.md``'s) when some comparison left examples out; None when none did."""
    if significance.empty or not (significance["n_unjoined"] > 0).any():
        return None
    part = significance[significance["n_unjoined"] > 0]
    return unjoined_message("significance", int(part["n_unjoined"].sum()),
                            int((part["n_examples"] + part["n_unjoined"]).sum()), "examples of the compared cells",
                            f"not in every trial's predictions, in {len(part)} of {len(significance)} comparisons; "
                            "each was tested on the examples all its trials share, n_unjoined in significance.csv")


def write_significance(significance: pd.DataFrame, intervals: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``significance.csv`` / ``significance.md`` (every comparison) and ``cell_intervals.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "significance.csv", out_dir / "significance.md", out_dir / "cell_intervals.csv"]
    significance.to_csv(paths[0], index=False)
    intervals.to_csv(paths[2], index=False)
    lines = ["# Significance of table differences", "",
             "Paired bootstrap over the shared test examples (every seed's predictions; each resample recomputes",
             "the metric per seed, e.g. micro-F1 without the negative class, and takes the median over seeds).",
             f"delta = A - B (x100); 95% percentile interval; two-sided p-value; significant when p < {ALPHA}.",
             "seed spread: min..max of the per-seed paired deltas.", "",
             *((f"**{note}**", "") if (note := unjoined_note(significance)) else ()),
             "| dataset | setting | compares | A | B | n | delta | 95% CI | p | seed spread | |",
             "|---|---|---|---|---|---:|---:|---|---:|---|---|"]
    for r in significance.itertuples(index=False):
        a = r.model_a if r.comparison == "model" else r.format_a
        b = r.model_b if r.comparison == "model" else r.format_b
        spread = (f"{100 * r.seed_delta_min:+.1f}..{100 * r.seed_delta_max:+.1f}"
                  if not np.isnan(r.seed_delta_min) else "n/a")
        lines.append(f"| {r.dataset} | {r.setting} | {r.comparison}s ({r.fixed}) | {a} | {b} | {r.n_examples} | "
                     f"{100 * r.delta:+.1f} | [{100 * r.ci_lo:+.1f}, {100 * r.ci_hi:+.1f}] | {r.p_value:.3f} | "
                     f"{spread} | {'' if r.significant else 'n.s.'} |")
    paths[1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def analysis(context) -> list[Path]:
    """Report part: every comparison the tables make, tested (shared with the tables for their marks)."""
    if not context.predictions:
        return []
    significance = significance_frame(context.trials, context.predictions)
    intervals = cell_intervals(context.trials, context.predictions)
    context.shared.update(significance=significance, intervals=intervals)
    note = unjoined_note(significance)
    if note:
        context.log(note)
    return write_significance(significance, intervals, context.out_dir)


__all__ = ["analysis", "ALPHA", "N_BOOTSTRAP", "MARK_MODEL", "MARK_FORMAT", "load_predictions", "negative_label",
           "example_counts", "f1_from_counts", "bootstrap_medians", "p_value", "compare_cells",
           "significance_frame", "cell_intervals", "table_marks", "unjoined_note", "significance_notes", "write_significance"]
