"""The few sentences a study ends with: what it found, next to what the paper reported.

Read from the summary's ``cells.csv`` (medians, min and max over seeds per cell), so it says only
what the tables show: for every model and setting with C+M, OnlyC and OnlyM, the order of the three
formats against the paper's (Table 5: C+M > OnlyC > OnlyM), and for a model pre-trained with CP
next to its base encoder, the difference in C+M with both seed ranges, whatever it shows; where the study
scored test views, whether the pre-trained model relies less on names (``name_reliance_compare.csv``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

FORMATS = ("C+M", "OnlyC", "OnlyM")  # the paper's finding: C+M > OnlyC > OnlyM (Table 5)
SHORT = {"micro_f1": "micro-F1", "accuracy": "accuracy", "semeval_official": "official score"}


def _paper(reported, dataset: str, label: Optional[str], setting: str) -> Optional[dict[str, float]]:
    if reported is None or not label:
        return None
    rows = reported[(reported["dataset"] == dataset) & (reported["model"] == label) & (reported["setting"] == setting)]
    values = {r.input_format: float(r.value) for r in rows.itertuples() if r.input_format in FORMATS}
    return values if len(values) == len(FORMATS) else None


def findings_paragraph(summary_dir: Path, compare_to: Optional[Mapping[str, Optional[str]]] = None,
                       pretrain: Optional[Mapping[str, dict]] = None) -> str:
    """One short paragraph of findings, or "" when the study has no cells to compare.

    ``pretrain``: stage name -> its held-out figures (``heldout_contrastive_accuracy`` and
    ``heldout_chance_accuracy``, at the start as ``initial_*``), to say whether the stage learned.
    """
    import pandas as pd

    from recon.data_prep.registry import display_name, reported_metric

    from recon.orchestration.report.tables import reported_results

    path = Path(summary_dir) / "cells.csv"
    if not path.is_file():
        return ""
    cells = pd.read_csv(path)
    compare_to = compare_to or {}
    try:
        reported = reported_results()
    except Exception:  # pragma: no cover - the packaged CSV is always there
        reported = None
    sentences = []
    for (dataset, setting, model), group in cells.groupby(["dataset", "setting", "model"], sort=False):
        by_format = {r.format: r for r in group.itertuples()}
        if not set(FORMATS) <= set(by_format):
            continue
        order = sorted(FORMATS, key=lambda f: -by_format[f].median)
        ours = " > ".join(f"{f} {by_format[f].median:.3f}" for f in order)
        metric = str(getattr(by_format["C+M"], "metric", "") or "")
        paper = _paper(reported, display_name(dataset), compare_to.get(model), setting)
        verdict = ""
        if paper:
            paper_order = sorted(FORMATS, key=lambda f: -paper[f])
            same = order == paper_order
            paper_metric = reported_metric(dataset, "official") if dataset else metric
            verdict = (f", {'as' if same else 'unlike'} in the paper ({compare_to.get(model)}, "
                       f"{SHORT.get(paper_metric, paper_metric)}: "
                       + " > ".join(f"{paper[f]:.3f}" for f in paper_order) + ")")
        collapsed = [f for f in FORMATS if by_format[f].median <= 0.0]
        warn = f"; collapsed to the negative class: {', '.join(collapsed)}" if collapsed else ""
        label = f" ({SHORT.get(metric, metric)})" if metric else ""
        sentences.append(f"{display_name(dataset)} {setting}, {model}{label}: {ours}{verdict}{warn}.")
    base_of = {label: name for name, label in compare_to.items() if label in ("BERT", "CNN")}
    for name, label in compare_to.items():
        base = base_of.get("BERT")
        if label not in ("CP", "MTB") or not base:
            continue
        for (dataset, setting), group in cells[cells["format"] == "C+M"].groupby(["dataset", "setting"], sort=False):
            rows = {r.model: r for r in group.itertuples()}
            if name in rows and base in rows:
                a, b = rows[name], rows[base]
                overlap = a.min <= b.max and b.min <= a.max
                sentences.append(
                    f"{name} vs {base}, {display_name(dataset)} {setting} C+M: {a.median:.3f} vs {b.median:.3f} "
                    f"(seed ranges {a.min:.3f}-{a.max:.3f} / {b.min:.3f}-{b.max:.3f}): "
                    + ("within the seed spread, so no effect of pre-training is shown at this scale." if overlap else
                       ("higher" if a.median > b.median else "lower") + " beyond the seed spread.")
                )
    sentences += reliance_sentences(Path(summary_dir))
    for stage, held in (pretrain or {}).items():
        if "heldout_contrastive_accuracy" in held:
            start = held.get("initial_heldout_contrastive_accuracy")
            sentences.append(
                f"Pre-training stage {stage}: held-out contrastive accuracy "
                + (f"{start:.3f} -> " if start is not None else "")
                + f"{held['heldout_contrastive_accuracy']:.3f} (chance {held.get('heldout_chance_accuracy', float('nan')):.3f}).")
    if "planned" in cells.columns:  # medians over fewer seeds than planned are provisional: say which
        short = cells[cells["n"] < cells["planned"]].drop_duplicates(["dataset", "setting", "format", "model"])
        if len(short):
            listed = "; ".join(f"{display_name(r.dataset)} {r.setting} {r.format} {r.model} ({r.n}/{r.planned})"
                               for r in short.itertuples())
            sentences.append(f"Medians over fewer seeds than planned, so provisional: {listed}.")
    if not sentences:
        return ""
    return "Findings (medians over seeds): " + " ".join(sentences)


RELIANCE_VIEW = "swap-type"  # the view the findings lead with: names replaced by training names of the same type


def reliance_sentences(summary_dir: Path) -> list[str]:
    """Name reliance from ``name_reliance_compare.csv`` (``recon.orchestration.report.name_reliance``): per
    pre-trained model against its base, on the lead view (else the first one), the flip shares on changed
    examples and the drops with their intervals, and whether the difference in drop excludes 0, whichever way."""
    import pandas as pd

    from recon.data_prep.registry import display_name

    path = summary_dir / "name_reliance_compare.csv"
    if not path.is_file():
        return []
    compare = pd.read_csv(path)
    table_path = summary_dir / "name_reliance.csv"
    table = pd.read_csv(table_path) if table_path.is_file() else None
    out = []
    for (dataset, setting, fmt, model, base), group in compare.groupby(["dataset", "setting", "format", "model", "base"],
                                                                       sort=False):
        views = list(group["view"])
        r = group[group["view"] == (RELIANCE_VIEW if RELIANCE_VIEW in views else views[0])].iloc[0].to_dict()

        spans = {}
        if table is not None:
            for name in (model, base):
                row = table[(table["dataset"] == dataset) & (table["setting"] == setting) & (table["format"] == fmt)
                            & (table["model"] == name) & (table["view"] == r['view'])]
                if len(row):
                    spans[name] = f"{100 * row.iloc[0]['drop']:.1f} [{100 * row.iloc[0]['ci_lo']:.1f}, " \
                                  f"{100 * row.iloc[0]['ci_hi']:.1f}]"
        lower, higher = r['ci_hi'] < 0, r['ci_lo'] > 0
        verdict = ("so its pre-training reduced name reliance at this scale" if lower else
                   "so it relies on names more than its base here" if higher else
                   "the interval includes 0, so no reduction of name reliance is shown at this scale")
        own, theirs = f"{100 * r['drop']:.1f}", f"{100 * r['base_drop']:.1f}"
        drops = f"; drop from the original test {spans.get(model, own)} vs {spans.get(base, theirs)} (x100, 95% intervals)"
        others = [o for o in group.itertuples(index=False) if o.view != r["view"]]
        rest = ("; the other views' differences in drop: " + ", ".join(
            f"{o.view} {100 * o.diff:+.1f} [{100 * o.ci_lo:+.1f}, {100 * o.ci_hi:+.1f}]"
            + (" (less reliance)" if o.ci_hi < 0 else " (more reliance)" if o.ci_lo > 0 else "") for o in others)
            if others else "")
        out.append(f"Name reliance, {display_name(dataset)} {setting} {fmt}, {r['view']}: {model}'s predictions flip on "
                   f"{100 * r['flip_share_changed']:.0f}% of swapped examples against {base}'s "
                   f"{100 * r['base_flip_share_changed']:.0f}%{drops}; difference in drop {100 * r['diff']:+.1f} "
                   f"[{100 * r['ci_lo']:+.1f}, {100 * r['ci_hi']:+.1f}]: {verdict}{rest}.")
    return out


__all__ = ["findings_paragraph", "reliance_sentences"]
