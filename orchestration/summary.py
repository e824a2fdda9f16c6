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
from recon.data_prep.registry import display_name

from .plan import Trial, expand, unavailable_trials
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


def table_footnotes(spec: StudySpec, trials: list[Trial], runs: dict) -> dict[str, list[str]]:
    """Per table: cells that cannot run here (and why), training subsets that fell back to seeded
    sampling, and pre-training stages that were allowed to see the evaluated entity pairs."""
    from .stages import study_data_dir

    notes: dict[str, list[str]] = {}

    def add(tables, text: str) -> None:
        for table in tables:
            if text not in notes.setdefault(table, []):
                notes[table].append(text)

    missing = unavailable_trials(spec, trials, study_data_dir(spec))
    for trial in trials:
        if trial.trial_id in missing:
            add(trial.tables, f"{display_name(trial.dataset)} {trial.setting}: not run here ({missing[trial.trial_id]})")
    for trial in trials:
        run = runs.get(trial.trial_id)
        used = run.data.tags.get("split_source") if run else None
        if trial.kind == "finetune" and used == "seeded" and spec.data.split_source == "paper":
            add(trial.tables, f"{display_name(trial.dataset)} {trial.setting}: no released train file, so the "
                              "training subset is seeded per-relation sampling (one per seed)")
    for name, stage in spec.pretrain.items():
        if stage.allow_leakage:
            users = [m.name for m in spec.models if m.pretrain_ref == name]
            add({t for trial in trials if trial.model in users for t in trial.tables},
                f"{', '.join(users)}: pre-trained with allow_leakage (the corpus may contain entity pairs "
                "of the evaluated datasets)")
    return notes


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
    runs = tracker.trial_runs()
    footnotes = table_footnotes(spec, trials, runs)
    files = write_all(stats, compare_to, out_dir, footnotes)
    files += plot_all(stats, out_dir)
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
    notes["tables"] = footnotes
    (out_dir / "notes.json").write_text(json.dumps(notes, indent=2) + "\n", encoding="utf-8")
    tracker.log_study_summary(summary_metrics(stats), out_dir, spec.source)
    log(f"summary: {len(results['trial_id'].unique())} trials, {len(stats)} cells -> {out_dir}")
    return out_dir
