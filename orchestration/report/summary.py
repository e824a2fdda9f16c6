"""Study summary from MLflow alone: medians, paper-shaped tables, deltas, plots, pilot analysis.

``write_summary`` reads the finished trial runs of the plan (labels from the plan, metrics and
predictions from MLflow), writes everything under ``<output_dir>/summary/`` and logs it to the
study's parent run: medians / min / max / IQR per cell as metrics, files as artifacts.

The parts of the report are a registry (``recon.orchestration.report.analyses.ANALYSES``), each
``analysis(context) -> files`` over one :class:`~recon.orchestration.report.context.ReportContext`:
significance tests, the paper-shaped tables (marked with them), plots, the pilot analysis, what names
leak and the error browser. The parts that read ``predictions.jsonl`` run when there are predictions;
the name-leak analysis and the browser's sentences skip themselves with a message when their datasets
or corpora cannot be read here.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from recon.data_prep.registry import display_name
from recon.orchestration.report.aggregate import cell_stats
from recon.orchestration.report.analyses import ANALYSES
from recon.orchestration.report.context import Analysis, ReportContext
from recon.orchestration.report.from_storage import predictions_from_storage, results_from_storage
from recon.core.storage import Storage
from recon.orchestration.report.significance import load_predictions
from recon.orchestration.study.plan import expand, unavailable_trials
from recon.orchestration.study.spec import StudySpec
from recon.orchestration.study.stages import study_data_dir
from recon.orchestration.study.tracker import StudyTracker, results_frame
from recon.orchestration.study.trial import Trial
from recon.orchestration.tracking.client import metric_key

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


def table_footnotes(spec: StudySpec, trials: list[Trial], runs: dict, failed: Optional[dict] = None
                    ) -> dict[str, list[str]]:
    """Per table: cells that cannot run here (and why), trials that failed (and their error), training
    subsets that fell back to seeded sampling, and pre-training stages allowed to see evaluated pairs."""
    from recon.orchestration.study.stages import study_data_dir

    notes: dict[str, list[str]] = {}

    def add(tables, text: str) -> None:
        for table in tables:
            if text not in notes.setdefault(table, []):
                notes[table].append(text)

    for text, tables in metric_notes(trials).items():
        add(tables, text)

    missing = unavailable_trials(spec, trials, study_data_dir(spec))
    for trial in trials:
        if trial.trial_id in missing:
            add(trial.tables, f"{display_name(trial.dataset)} {trial.setting}: not run here ({missing[trial.trial_id]})")
    for trial in trials:
        bad = (failed or {}).get(trial.trial_id)
        if bad is not None:
            add(trial.tables, f"{display_name(trial.dataset)} {trial.setting} {trial.format} {trial.model} seed "
                              f"{trial.seed}: failed ({bad.data.tags.get('error', 'unknown error')})")
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


def metric_notes(trials: list[Trial]) -> dict[str, set[str]]:
    """Footnotes saying which metric each dataset's cells are, under which protocol, and where the paper's
    number for that dataset is a different metric (SemEval: the official scorer's) -> the tables they go under."""
    from recon.core.protocol import describe
    from recon.data_prep.registry import reported_metric
    from recon.models.train.metrics import METRIC_LABELS

    out: dict[str, set[str]] = {}
    protocols: dict[str, set[str]] = {}
    for trial in trials:
        if trial.kind != "finetune":
            continue
        paper_metric = reported_metric(trial.dataset, "official")
        text = f"{display_name(trial.dataset)}: test {METRIC_LABELS.get(trial.metric, trial.metric)} x 100, median over seeds"
        if paper_metric != trial.metric:
            text += (f"; the paper reports {METRIC_LABELS.get(paper_metric, paper_metric)}, so the delta table compares "
                     "different measures (data: {scorer: official} tabulates the paper's)")
        out.setdefault(text, set()).update(trial.tables)
        protocols.setdefault(describe(trial.runner_config()), set()).update(trial.tables)
    for name, tables in protocols.items():
        out.setdefault(f"protocol: {name} (README, \"Protocol\")", set()).update(tables)
    return out


def study_tags(spec: StudySpec, trials: list[Trial]) -> dict[str, str]:
    """``recon.*`` tags of the experiment and the parent run (to filter experiments by)."""
    def joined(values) -> str:
        return ",".join(dict.fromkeys(str(v) for v in values))

    return {"recon.study": spec.name, "recon.datasets": joined(t.dataset for t in trials),
            "recon.models": joined(t.model for t in trials), "recon.tables": joined(x for t in trials for x in t.tables),
            "recon.formats": joined(t.format for t in trials), "recon.seeds": joined(spec.seeds),
            "recon.trials": str(len(trials))}


def experiment_description(spec: StudySpec, trials: list[Trial]) -> str:
    """The experiment's description (Markdown): the study, what its runs are, how to filter them."""
    models = ", ".join(dict.fromkeys(t.model for t in trials))
    datasets = ", ".join(display_name(d) for d in dict.fromkeys(t.dataset for t in trials))
    lines = [f"**recon study {spec.name}**" + (f": {spec.description.strip()}" if spec.description.strip() else ""),
             "",
             f"{len(trials)} trials: {models} on {datasets}; seeds {', '.join(map(str, spec.seeds))}. "
             f"One run per trial (a grid cell and seed), nested under the parent run *{spec.name} (study)*, "
             "whose description and artifacts (`overview.html`, `tables/`, `summary/`) hold the paper-layout "
             "tables and plots.",
             "",
             "Filter runs with e.g. `tags.dataset = 'semeval'`, `tags.format = 'C+M'`, `tags.model = '...'`, "
             "`tags.setting = '10%'`, `tags.tables LIKE '%table5%'` or by dataset (Datasets used); compare `test_metric` "
             "(the dataset's paper metric at the best dev epoch)."]
    return "\n".join(lines)


def study_run_description(spec: StudySpec, trials: list[Trial], results, out_dir: Path) -> str:
    """The parent run's description (Markdown): the paper tables inline, and where everything is."""
    from recon.orchestration.tracking.client import MAX_TAG_VALUE
    from recon.orchestration.study.overview import paper_table_files

    finished = results["trial_id"].nunique() if len(results) else 0
    lines = [f"**Study {spec.name}**: {finished} of {len(trials)} trials finished." +
             (f" {spec.description.strip()}" if spec.description.strip() else ""),
             "",
             "Tables below: medians over seeds, x100, in the paper's layout. On one page with the plots: "
             "artifact `overview.html`; sortable: `tables/<name>.json`; every format (CSV, Markdown, HTML, LaTeX), "
             "the significance tests, the pilot analysis and `error_browser.html`: `summary/`."]
    budget = MAX_TAG_VALUE - 1500
    for name, csv in paper_table_files(out_dir).items():
        text = csv.with_suffix(".md").read_text(encoding="utf-8").strip()
        block = ["", f"#### {name}", "", text]
        if sum(len(x) + 1 for x in lines + block) > budget:
            lines += ["", f"#### {name}", "", f"(too long for here: `summary/{name}.md`, `tables/{name}.json`)"]
            continue
        lines += block
    plots = sorted(p.name for p in out_dir.glob("*.png"))
    if plots:
        lines += ["", "Plots: " + ", ".join(f"`summary/{p}`" for p in plots) + " (and in `overview.html`)."]
    return "\n".join(lines)


def run_analyses(context: ReportContext, analyses: Sequence[Analysis] = ANALYSES) -> list[Path]:
    """Every part of the report in order (``report.analyses``); the optional parts (names, the error browser's
    sentences) skip themselves with a message when their inputs cannot be read here."""
    files: list[Path] = []
    for analysis in analyses:
        files += analysis(context)
    return files


def planned_seeds(trials: Sequence[Trial]) -> dict[tuple, int]:
    """Per cell (table, dataset, setting, format, model): how many seeds the study plans."""
    planned: dict[tuple, int] = {}
    for trial in trials:
        for table in trial.tables:
            key = (table, trial.dataset, trial.setting, trial.format, trial.model)
            planned[key] = planned.get(key, 0) + 1
    return planned


def with_planned(stats, trials: Sequence[Trial]):
    """``stats`` with a ``planned`` column: a cell whose ``n`` is below it is a median over fewer seeds than the
    study asks for (trials failed, or not finished or not logged yet), and the tables say so in the cell."""
    planned = planned_seeds(trials)
    stats = stats.copy()
    stats["planned"] = [planned.get(tuple(row), n) for row, n in
                        zip(stats[["table", "dataset", "setting", "format", "model"]].itertuples(index=False),
                            stats["n"])]
    return stats


def write_summary(spec: StudySpec, tracker: Optional[StudyTracker] = None, *, log: Callable[[str], None] = print,
                  trials: Optional[list[Trial]] = None, storage: Optional[Storage] = None) -> Path:
    """Regenerate every table, plot and the pilot analysis; returns the summary folder.

    With ``storage`` (the tracking server does not answer), the finished trials are read from the study's storage
    instead of MLflow, and nothing is logged to the parent run: ``recon study tables`` redoes it from MLflow."""
    out_dir = spec.resolved_output_dir() / "summary"
    trials = trials if trials is not None else expand(spec)
    if storage is None:
        tracker = tracker or StudyTracker(spec.resolved_tracking_uri(), spec.name, create=False)
        if not tracker.exists:
            from recon.core.errors import ReconError

            raise ReconError(f"study {spec.name!r} has no MLflow experiment at {tracker.tracking_uri}; run it first")
        results = results_frame(tracker, trials)
    else:
        results = results_from_storage(trials, storage)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    results.to_csv(out_dir / "trials.csv", index=False)
    stats = cell_stats(results)
    if stats.empty:
        log("no finished trials yet: nothing to tabulate")
        return out_dir
    stats = with_planned(stats, trials)
    runs = tracker.trial_runs() if storage is None else {}
    footnotes = table_footnotes(spec, trials, runs, tracker.failed_trial_runs() if storage is None else {})
    with tempfile.TemporaryDirectory() as tmp:
        downloaded: dict[tuple[str, str], Optional[Path]] = {}
        from_storage = predictions_from_storage(storage, Path(tmp)) if storage is not None else None

        def predictions_of(trial: Trial, name: str = "predictions.jsonl") -> Optional[Path]:
            """A trial's predictions file (or ``view_predictions.jsonl``), downloaded once."""
            if from_storage is not None:
                return from_storage(trial, name)
            if (trial.trial_id, name) not in downloaded:
                run = runs.get(trial.trial_id)
                downloaded[(trial.trial_id, name)] = (tracker.download(run.info.run_id, name, Path(tmp) / trial.trial_id)
                                                      if run else None)
            return downloaded[(trial.trial_id, name)]

        context = ReportContext(spec, trials, results, stats, load_predictions(trials, predictions_of), predictions_of,
                                out_dir, footnotes, study_data_dir(spec), log)
        run_analyses(context)
    notes = {}
    if any(t.kind == "fewshot" for t in trials):
        notes["fewshot"] = FEWREL_NOTE
        notes["fewshot_trials"] = {r.data.tags.get("trial_id"): r.data.tags.get("notes", "")
                                   for r in runs.values() if r.data.tags.get("kind") == "fewshot"}
    if spec.data.max_eval:
        notes["max_eval"] = (f"dev and test were capped at {spec.data.max_eval} examples each (a fixed random subset): "
                             "figures are not the paper's full-test numbers")
    notes["tables"] = footnotes
    if storage is not None:
        notes["source"] = (f"built from storage ({storage.uri}): the tracking server did not answer; `recon study "
                           "tables` rebuilds it from MLflow once the trials are logged")
    (out_dir / "notes.json").write_text(json.dumps(notes, indent=2) + "\n", encoding="utf-8")
    if storage is not None:
        log(f"summary: {len(results['trial_id'].unique())} trials, {len(stats)} cells, from storage")
        return out_dir
    tracker.log_study_summary(summary_metrics(stats), out_dir, spec.source,
                              description=study_run_description(spec, trials, results, out_dir),
                              tags=study_tags(spec, trials))
    tracker.describe_experiment(experiment_description(spec, trials), study_tags(spec, trials))
    log(f"summary: {len(results['trial_id'].unique())} trials, {len(stats)} cells")  # the caller says where they
    return out_dir                                                                     # are kept (a job: storage)
