"""Study summary from MLflow alone: medians, paper-shaped tables, deltas, plots, pilot analysis.

``write_summary`` reads the finished trial runs of the plan (labels from the plan, metrics and
predictions from MLflow), writes everything under ``<output_dir>/summary/`` and logs it to the
study's parent run: medians / min / max / IQR per cell as metrics, files as artifacts.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from .aggregate import cell_stats
from .pilot import pilot_analysis
from .plan import Trial, expand
from .plots import plot_all
from .spec import StudySpec
from .tables import write_all
from .tracking import StudyTracker, metric_key, results_frame

FEWREL_NOTE = ("FewRel's train_wiki.json is not available locally: few-shot trials say in their notes "
               "what they trained on instead; see each trial run's 'notes' tag.")


def summary_metrics(stats) -> dict[str, float]:
    """Parent-run metrics: ``<table>/<dataset>/<setting>/<format>/<model>/<stat>``."""
    out = {}
    for row in stats.itertuples(index=False):
        for stat in ("median", "min", "max", "iqr"):
            key = metric_key(row.table, row.dataset, row.setting.replace("%", "pct"), row.format, row.model, stat)
            out[key] = float(getattr(row, stat))
    return out


def write_summary(spec: StudySpec, tracker: Optional[StudyTracker] = None, *, log: Callable[[str], None] = print,
                  trials: Optional[list[Trial]] = None) -> Path:
    """Regenerate every table, plot and the pilot analysis; returns the summary folder."""
    out_dir = spec.resolved_output_dir() / "summary"
    tracker = tracker or StudyTracker(spec.resolved_tracking_uri(), spec.name, create=False)
    if not tracker.exists:
        from recon.data_prep.errors import ReconError

        raise ReconError(f"study {spec.name!r} has no MLflow experiment at {tracker.tracking_uri}; run it first")
    trials = trials if trials is not None else expand(spec)
    results = results_frame(tracker, trials)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    results.to_csv(out_dir / "trials.csv", index=False)
    stats = cell_stats(results)
    if stats.empty:
        log("no finished trials yet: nothing to tabulate")
        return out_dir
    compare_to = {m.name: m.paper_label for m in spec.models}
    files = write_all(stats, compare_to, out_dir)
    files += plot_all(stats, out_dir)
    runs = tracker.trial_runs()
    with tempfile.TemporaryDirectory() as tmp:
        def predictions_of(trial: Trial) -> Optional[Path]:
            run = runs.get(trial.trial_id)
            return tracker.download(run.info.run_id, "predictions.jsonl", Path(tmp) / trial.trial_id) if run else None

        files += pilot_analysis(trials, predictions_of, out_dir)
    notes = {}
    if any(t.kind == "fewshot" for t in trials):
        notes["fewshot"] = FEWREL_NOTE
        notes["fewshot_trials"] = {r.data.tags.get("trial_id"): r.data.tags.get("notes", "")
                                   for r in runs.values() if r.data.tags.get("kind") == "fewshot"}
    if spec.data.max_eval:
        notes["max_eval"] = (f"dev and test were capped at {spec.data.max_eval} examples each (a fixed random subset): "
                             "figures are not the paper's full-test numbers")
    (out_dir / "notes.json").write_text(json.dumps(notes, indent=2) + "\n", encoding="utf-8")
    tracker.log_study_summary(summary_metrics(stats), out_dir, spec.source)
    log(f"summary: {len(results['trial_id'].unique())} trials, {len(stats)} cells -> {out_dir}")
    return out_dir
