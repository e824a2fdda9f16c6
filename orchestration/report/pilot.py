"""Section 2.4 pilot analysis: how much two input formats of one model agree, example by example.

For two formats A and B (C+M against each other format) of the same model, dataset, setting and
seed, scored on the same test examples, the paper reports e.g. "C+M shares 95.7% correct
predictions with C+T, and 68.1% wrong predictions of C+M are the same as C+T". We compute

* ``shared_correct`` = |A right and B right| / |A right|
* ``same_wrong``     = |A wrong and B predicts the same wrong label| / |A wrong|
* the counts behind them, and a sample of examples only A gets right and only B gets right.

Predictions come from the trials' ``predictions.jsonl`` (one ``{"source", "gold", "pred"}`` per
test example); examples are matched by their portable identity (``recon.orchestration.report.joins``;
line order where a file has no source). Examples in only one of the two files are counted
(``unjoined``), logged and noted in ``pilot_summary.md``, never dropped silently.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Iterable, Optional

import pandas as pd

from recon.orchestration.report.joins import read_predictions, unjoined_message
from recon.orchestration.study.trial import Trial

ANCHOR = "C+M"
SAMPLE_SIZE = 10


def compare(a: dict[str, dict], b: dict[str, dict]) -> tuple[dict, list[dict], list[dict]]:
    """Agreement figures of formats A and B, and the examples only A / only B gets right.

    ``unjoined`` counts the examples in one of the two prediction sets only (left out of every figure).
    """
    common = [k for k in a if k in b]
    a_right = {k for k in common if a[k]["pred"] == a[k]["gold"]}
    b_right = {k for k in common if b[k]["pred"] == b[k]["gold"]}
    a_wrong = [k for k in common if k not in a_right]
    same_wrong = sum(1 for k in a_wrong if b[k]["pred"] == a[k]["pred"])
    both = a_right & b_right
    only_a = [{"source": k, "gold": a[k]["gold"], "pred_a": a[k]["pred"], "pred_b": b[k]["pred"]}
              for k in common if k in a_right and k not in b_right]
    only_b = [{"source": k, "gold": a[k]["gold"], "pred_a": a[k]["pred"], "pred_b": b[k]["pred"]}
              for k in common if k in b_right and k not in a_right]
    figures = {
        "n": len(common), "unjoined": len(a) + len(b) - 2 * len(common), "a_correct": len(a_right), "b_correct": len(b_right), "both_correct": len(both),
        "only_a_correct": len(only_a), "only_b_correct": len(only_b),
        "shared_correct": len(both) / len(a_right) if a_right else float("nan"),
        "same_wrong": same_wrong / len(a_wrong) if a_wrong else float("nan"),
    }
    return figures, only_a, only_b


def pilot_analysis(trials: Iterable[Trial], predictions_of: Callable[[Trial], Optional[Path]],
                   out_dir: Path, seed: int = 0, log: Callable[[str], None] = print) -> list[Path]:
    """Compare C+M with every other format per (dataset, setting, model, seed); write CSV, Markdown, samples.

    Returns the written files (none when no pair of formats has predictions on both sides).
    """
    finetune = [t for t in trials if t.kind == "finetune"]
    groups: dict[tuple, dict[str, Trial]] = {}
    for t in finetune:
        groups.setdefault((t.dataset, t.setting, t.model, t.seed), {})[t.format] = t
    rows, samples = [], []
    rng = random.Random(seed)
    for (dataset, setting, model, trial_seed), by_format in groups.items():
        if ANCHOR not in by_format:
            continue
        a_path = predictions_of(by_format[ANCHOR])
        if a_path is None:
            continue
        a = read_predictions(a_path)
        for fmt, trial in by_format.items():
            if fmt == ANCHOR or (b_path := predictions_of(trial)) is None:
                continue
            figures, only_a, only_b = compare(a, read_predictions(b_path))
            key = {"dataset": dataset, "setting": setting, "model": model, "seed": trial_seed,
                   "format_a": ANCHOR, "format_b": fmt}
            rows.append({**key, **figures})
            for side, items in (("only_a_correct", only_a), ("only_b_correct", only_b)):
                for item in rng.sample(items, min(SAMPLE_SIZE, len(items))):
                    samples.append({**key, "kind": side, **item})
    if not rows:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    unjoined = frame[frame["unjoined"] > 0]
    note = []
    if len(unjoined):
        total = int((2 * frame["n"] + frame["unjoined"]).sum())
        note = [unjoined_message("pilot analysis", int(unjoined["unjoined"].sum()), total, "predictions",
                                 f"in one format's predictions but not the other's, {len(unjoined)} of {len(frame)} "
                                 "pairs; left out of the figures")]
        log(note[0])
    summary = (frame.groupby(["dataset", "setting", "model", "format_a", "format_b"], sort=False)
               [["shared_correct", "same_wrong"]].median().reset_index())
    paths = [out_dir / "pilot_pairs.csv", out_dir / "pilot_summary.md", out_dir / "pilot_examples.jsonl"]
    frame.to_csv(paths[0], index=False)
    lines = ["# Pilot analysis (Section 2.4): agreement of C+M with other formats", "",
             "Medians over seeds. shared_correct = share of C+M's correct predictions the other format also gets",
             "right; same_wrong = share of C+M's errors where the other format predicts the same wrong label.", "",
             *(f"**{line}**" for line in note), *([""] if note else []),
             "| dataset | setting | model | A | B | shared_correct | same_wrong |", "|---|---|---|---|---|---:|---:|"]
    for r in summary.itertuples(index=False):
        lines.append(f"| {r.dataset} | {r.setting} | {r.model} | {r.format_a} | {r.format_b} | "
                     f"{r.shared_correct:.3f} | {r.same_wrong:.3f} |")
    paths[1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths[2].write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return paths


def analysis(context) -> list[Path]:
    """Report part: which examples each pair of formats gets right together (the pilot analysis)."""
    return pilot_analysis(context.trials, context.predictions_of, context.out_dir, log=context.log)
