"""A small real study end to end: Ray Tune (local), MLflow, tables; resume and re-runs never duplicate runs."""
import json
import shutil
from pathlib import Path

import pytest

from recon.orchestration.study.plan import expand
from recon.orchestration.study.spec import load_spec
from recon.orchestration.study.tracker import StudyTracker
from recon.orchestration.study.trainable import publish_result, result_rel
from recon.orchestration.study.trainers import TrialRequest, resolve_references, resolve_trainer
from recon.orchestration.study.runner import harvest, study_storage

FIXTURES = Path(__file__).parent / "fixtures" / "studies"


def _study(tmp_path: Path, formats: str = "[C+M, OnlyC]", seeds: str = "[42]") -> Path:
    """The toy study with its own output dir: 2 trials (C+M and OnlyC, one seed)."""
    shutil.copy(FIXTURES / "toy_trainer.py", tmp_path / "toy_trainer.py")
    text = (FIXTURES / "toy_study.yaml").read_text()
    text = text.replace("formats: [C+M]", f"formats: {formats}").replace("seeds: [42, 43]", f"seeds: {seeds}")
    path = tmp_path / "study.yaml"
    path.write_text(text + f"output_dir: {tmp_path / 'out'}\n")
    return path


def _trial_runs(spec):
    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, create=False)
    runs = tracker._search("tags.`recon.role` = 'trial'")
    return tracker, runs


def test_harvest_logs_finished_trials_once_without_training(tmp_path):
    """A trial that finished on disk but never reached MLflow (driver killed) is logged at the next start."""
    spec = load_spec(_study(tmp_path))
    trials = expand(spec)
    trainer = resolve_trainer(spec.trainer, "finetune", spec.source.parent)
    store = study_storage(spec)
    out = tmp_path / "worker-out"
    request = TrialRequest(trials[0], out, config=resolve_references(trials[0], {}, None))
    publish_result(store, trials[0].trial_id, out, trainer(request, []))
    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, spec.resolved_output_dir() / "artifacts")
    assert harvest(trials, tracker, store, tracker.finished_trial_ids()) == 1
    assert harvest(trials, tracker, store, tracker.finished_trial_ids()) == 0
    _, runs = _trial_runs(spec)
    assert [r.data.tags["trial_id"] for r in runs] == [trials[0].trial_id]
    run = runs[0]
    assert run.data.params["input_format"] == "C+M" and run.data.params["training.seed"] == "42" and run.data.tags["dataset"] == "semeval"
    result = store.read_json(result_rel(trials[0].trial_id))
    assert run.data.metrics["test_metric"] == pytest.approx(result["test"]["micro_f1"])


def test_unfinished_run_from_a_killed_driver_is_replaced(tmp_path):
    spec = load_spec(_study(tmp_path))
    trial = expand(spec)[0]
    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, spec.resolved_output_dir() / "artifacts")
    half = tracker.client.create_run(tracker.experiment.experiment_id,
                                     tags={"recon.role": "trial", "trial_id": trial.trial_id})  # left RUNNING
    assert trial.trial_id not in tracker.finished_trial_ids()
    run_id = tracker.log_trial(trial, {"test": {"micro_f1": 0.5}, "dev": {"micro_f1": 0.4}}, tmp_path / "none")
    assert run_id is not None and run_id != half.info.run_id
    _, runs = _trial_runs(spec)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert tracker.log_trial(trial, {"test": {"micro_f1": 0.9}}, tmp_path / "none") is None  # already finished


@pytest.mark.slow
def test_study_on_ray_tune_twice_gives_one_run_per_trial(tmp_path, capsys):
    from recon.orchestration.cli.main import main

    path = _study(tmp_path)
    spec = load_spec(path)
    trials = expand(spec)
    assert len(trials) == 2

    assert main(["study", "run", str(path)]) == 0
    first = capsys.readouterr().out
    assert "2 run now, 0 failed; 2 in MLflow" in first and f"recon ui {path}" in first
    # Tune kept its experiment state for a restart, but wrote no per-result log files (lean_tune):
    tune_files = [p.name for p in (spec.resolved_output_dir() / "tune").rglob("*") if p.is_file()]
    assert any(name.startswith("experiment_state") for name in tune_files), tune_files
    assert not [n for n in tune_files if n in ("progress.csv", "result.json") or n.startswith("events.out")]

    # Second time: nothing runs, nothing is logged again.
    assert main(["study", "resume", str(path)]) == 0
    assert "2 already done" in capsys.readouterr().out
    tracker, runs = _trial_runs(spec)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)
    assert all(r.info.status == "FINISHED" for r in runs)
    # Per-epoch metrics (3 epochs) reached MLflow, and the predictions artifact.
    history = tracker.client.get_metric_history(runs[0].info.run_id, "epoch/dev_micro_f1")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert "predictions.jsonl" in {a.path for a in tracker.client.list_artifacts(runs[0].info.run_id)}

    # Tables regenerated from MLflow alone (trial dirs removed), pilot analysis included.
    shutil.rmtree(spec.resolved_output_dir() / "results")  # trial outputs in storage (here: the output dir)
    assert main(["study", "tables", str(path)]) == 0
    capsys.readouterr()
    summary = spec.resolved_output_dir() / "summary"
    cells = (summary / "cells.csv").read_text().splitlines()
    assert len(cells) == 3  # header + C+M + OnlyC
    assert (summary / "table5.md").is_file() and (summary / "plot_semeval.png").is_file()
    assert (summary / "pilot_pairs.csv").is_file()

    assert main(["study", "plan", str(path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["finished"] == 2 and plan["trials"] == 2
    parent = tracker._search("tags.`recon.role` = 'study'")
    assert len(parent) == 1 and any(k.endswith("/median") for k in parent[0].data.metrics)
