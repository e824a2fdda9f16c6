"""Sweeps: the spec (paths, domains, constraints, file/line/field errors), trial ids, resume bookkeeping,
and (slow) real sweeps on a tiny BERT: end to end with MLflow and plots, killed and resumed, and
submitted to the two-node shared-nothing cluster."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from recon.core.yaml_layers import SpecError  # noqa: E402
from recon.orchestration.sweep.space import Domain, field_of  # noqa: E402
from recon.orchestration.sweep.spec import best_snippet, load_sweep, plan, sweep_from_payload  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "sweep"
CORPUS = ROOT / "tests" / "fixtures" / "pretrain" / "corpus"
DATA = Path(os.environ.get("RECON_DATA_DIR") or ROOT.parent / "shared" / "datasets")


# ---------------------------------------------------------------- the spec

def test_shipped_sweeps_validate_and_plan():
    demo = load_sweep(ROOT / "studies" / "sweep-demo.yaml")
    assert demo.sampler.type == "tpe" and set(demo.domains) == {"pretrain.p_blank", "pretrain.batch_size"}
    assert demo.probe_steps() == [4, 8] and demo.trials_budget() == 5
    paper = load_sweep(ROOT / "studies" / "sweep-paper.yaml")
    points = paper.grid_points()
    assert paper.trials_budget() == 4 and {(p["pretrain.batch_size"], p["pretrain.p_blank"]) for p in points} == {
        (256, 0.3), (256, 0.7), (2048, 0.3), (2048, 0.7)}
    pre, probe = paper.resolve(points[-1])
    assert (pre.batch_size, pre.accum_steps, pre.steps, pre.objective) == (2048, 8, 3500, "cp")
    assert probe.dataset == "tacred" and paper.probe_steps() == [1167, 2334, 3500]
    info = plan(paper)
    assert info["trials"] == 4 and info["estimated_hours_total"] > 1 and len(info["grid"]) == 4


@pytest.mark.parametrize("name, field, message", [
    ("bad_path.yaml", "space.pretrain.p_blnk", "has no field 'p_blnk'"),
    ("bad_value.yaml", "space.pretrain.p_blank", "value 1.5 is invalid: must be <= 1, got 1.5"),
    ("bad_batch.yaml", "space.pretrain.batch_size", "12 is not a multiple of workers x micro-batch"),
    ("bad_finetune_path.yaml", "space.finetune.training.lrate", "TrainConfig (finetune.training) has no field"),
    ("bad_grid.yaml", "space.pretrain.p_blank", "a grid sampler needs choice"),
    ("bad_grid_budget.yaml", "budget.trials", "the grid has 4 points"),
    ("bad_field.yaml", "budget.concurency", "unknown field"),
    ("bad_steps.yaml", "pretrain.steps", "budget.steps"),
])
def test_bad_sweeps_name_file_line_and_field(name, field, message):
    with pytest.raises(SpecError) as err:
        load_sweep(FIXTURES / name)
    text = str(err.value)
    assert f"{FIXTURES / name}, line " in text and f"field '{field}'" in text and message in text, text


def test_paths_resolve_to_real_leaf_fields_that_change_results(tmp_path):
    cls, f = field_of("finetune.training.lr")
    assert cls.__name__ == "TrainConfig" and f.name == "lr"
    for path, message in (("finetune.training", "is a section"), ("model.lr", "starts with"),
                          ("pretrain.p_blank.x", "is not a section")):
        with pytest.raises(ValueError, match=message):
            field_of(path)
    base = (FIXTURES / "base.yaml").read_text()
    for space, message in (("pretrain.cpus_per_worker: uniform(1, 2)", "does not change results"),
                           ("pretrain.warmup: uniform(0, 10)", "is an integer: use randint"),
                           ("finetune.training.seed: choice([1, 2])", "not searchable"),
                           ("pretrain.objective: choice([cp, xlnet])", "must be one of"),
                           ("pretrain.lr: loguniform(0, 1)", "loguniform needs low > 0")):
        path = tmp_path / "s.yaml"
        path.write_text(base.replace("  pretrain.batch_size: choice([8, 16])", f"  {space}"))
        with pytest.raises(SpecError, match=message):
            load_sweep(path)


def test_domains_parse_to_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert Domain.parse("loguniform(1e-5, 1e-4)").optuna() == FloatDistribution(1e-5, 1e-4, log=True)
    assert Domain.parse("randint(1, 4)").optuna() == IntDistribution(1, 4)
    assert Domain.parse("choice([cp, mtb])").optuna() == CategoricalDistribution(["cp", "mtb"])
    assert Domain.parse([256, 2048]).choices == [256, 2048]
    for bad in ("uniform(1, 0)", "normal(0, 1)", "choice(1, 2)", "choice([])"):
        with pytest.raises(ValueError):
            Domain.parse(bad)


def test_trial_id_is_the_hash_of_the_resolved_configs(tmp_path):
    spec = load_sweep(FIXTURES / "base.yaml")
    a = spec.trial_id({"pretrain.p_blank": 0.3, "pretrain.batch_size": 8})
    assert a == spec.trial_id({"pretrain.batch_size": 8, "pretrain.p_blank": 0.3})
    assert a == sweep_from_payload(json.loads(json.dumps(spec.payload()))).trial_id(
        {"pretrain.p_blank": 0.3, "pretrain.batch_size": 8})  # what a trial on another node computes
    assert a != spec.trial_id({"pretrain.p_blank": 0.31, "pretrain.batch_size": 8})
    # the objective dependent defaults: a searched objective changes batch size / steps the same way a study does
    pre, probe = spec.resolve({"pretrain.p_blank": 0.3, "pretrain.batch_size": 16})
    assert (pre.p_blank, pre.batch_size, pre.steps, pre.checkpoint_every, pre.encoder) == (0.3, 16, 4, 2, "minilm")
    assert probe.training.max_train_steps == 2 and probe.data.max_eval == 20


def test_best_snippet_is_a_pretrain_stage_a_study_accepts(tmp_path):
    from recon.orchestration.study.spec import load_spec

    spec = load_sweep(ROOT / "studies" / "sweep-demo.yaml")
    snippet = best_snippet(spec, {"pretrain.p_blank": 0.42, "pretrain.batch_size": 8})
    study = tmp_path / "study.yaml"
    study.write_text("name: uses-best\nencoder: minilm\nmodels: [{name: M, checkpoint: '@pretrain.sweep-demo-best'}]\n"
                     "grids: [{datasets: [semeval]}]\n" + snippet)
    stage = load_spec(study).pretrain["sweep-demo-best"]
    assert (stage.p_blank, stage.batch_size, stage.steps, stage.lr, stage.max_length) == (0.42, 8, 8, 5e-5, 48)


def test_resume_settles_trials_a_killed_driver_left_running(tmp_path):
    """RUNNING trials: told COMPLETE from a result in storage, else FAIL and enqueued again; a grid's
    open points are enqueued once."""
    import optuna
    from optuna.trial import TrialState

    from recon.core.storage import Storage
    from recon.orchestration.sweep.journal import Journal, open_study, settle
    from recon.orchestration.sweep.trial import RESULT_FILE, trial_rel

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text((FIXTURES / "base.yaml").read_text().replace("budget: {trials: 3,", "sampler: {type: grid}\n"
                     "budget: {").replace("uniform(0.0, 1.0)", "choice([0.3, 0.7])") + f"output_dir: {tmp_path}\n")
    spec = load_sweep(sweep)
    store = Storage.from_uri(str(tmp_path / "store"))
    journal = Journal(spec, store)
    study = open_study(spec, journal)
    dists = {p: d.optuna() for p, d in spec.domains.items()}
    study.enqueue_trial({"pretrain.p_blank": 0.3, "pretrain.batch_size": 8})
    study.enqueue_trial({"pretrain.p_blank": 0.7, "pretrain.batch_size": 16})
    finished = study.ask(dists)  # RUNNING, finished in storage
    unfinished = study.ask(dists)  # RUNNING, interrupted
    tid = spec.trial_id(finished.params, "c")
    store.write_json(trial_rel(spec.name, tid, RESULT_FILE), {"objective": 0.5, "probes": []})
    out = settle(spec, study, store, "c", log=lambda m: None)
    assert (out["harvested"], out["requeued"]) == (1, 1)
    again = optuna.load_study(study_name=spec.name, storage=journal.storage())
    states = [t.state for t in again.trials]
    assert states[:2] == [TrialState.COMPLETE, TrialState.FAIL] and again.trials[0].value == 0.5
    waiting = [t for t in again.trials if t.state == TrialState.WAITING]
    assert waiting[0].system_attrs["fixed_params"] == unfinished.params  # the interrupted one runs again first
    assert len(waiting) == 4 - 1  # the grid's 3 points not finished, the interrupted one among them
    assert settle(spec, again, store, "c", log=lambda m: None)["done"] == 1
    assert len([t for t in again.trials if t.state == TrialState.WAITING]) == 3  # nothing enqueued twice


def test_stopped_trials_are_logged_nested_and_drawn_hollow(tmp_path):
    """Driver side without Ray: nested MLflow runs (idempotent), trials table, best config and PNG plots."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    from recon.orchestration.sweep.tracker import SweepTracker, trials_frame, write_artifacts

    dists = {"pretrain.p_blank": FloatDistribution(0, 1), "pretrain.batch_size": CategoricalDistribution([4, 8])}
    study = optuna.create_study(direction="maximize")
    records, states = {}, {}
    for n, (p, b, scores) in enumerate([(0.1, 4, [0.2, 0.3]), (0.9, 8, [0.1]), (0.5, 4, [0.25, 0.35]),
                                        (0.3, 8, [0.15])]):
        done = len(scores) == 2
        study.add_trial(create_trial(params={"pretrain.p_blank": p, "pretrain.batch_size": b}, distributions=dists,
                                     value=scores[-1] if done else None, intermediate_values={1: scores[0]},
                                     state=TrialState.COMPLETE if done else TrialState.PRUNED))
        states[n] = "completed" if done else "stopped_early"
        records[n] = {"trial_id": f"t{n}", "pretrain": {"p_blank": p, "batch_size": b}, "probe": {"split": 0.1},
                      "probes": [{"step": 4 * (i + 1), "objective": v, "scores": {"42": v}} for i, v in
                                 enumerate(scores)],
                      "curve": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}]}
    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", "unit-sweep", tmp_path / "artifacts")
    tracker.parent_run_id({"space": {"pretrain.p_blank": "uniform(0, 1)"}})
    for n, record in records.items():
        params = {k: study.trials[n].params[k] for k in dists}
        assert tracker.log_trial(n, params, states[n], record) is not None
    assert tracker.log_trial(1, {}, "stopped_early", records[1]) is None  # already logged: left alone
    runs = tracker.trial_runs()
    assert {k: r.info.status for k, r in runs.items()} == {"0": "FINISHED", "1": "KILLED", "2": "FINISHED",
                                                           "3": "KILLED"}
    assert runs["1"].data.tags["state"] == "stopped_early" and runs["2"].data.metrics["objective"] == 0.35
    frame = trials_frame(study, states, records)
    assert list(frame["step_8"].isna()) == [False, True, False, True]
    written = write_artifacts(study, frame, tmp_path / "sweep", list(dists), "dev", "pretrain: {}\n", records)
    names = {p.name for p in written}
    assert {"trials.csv", "best_config.yaml", "optimization_history.png", "param_importances.png",
            "objective_vs_p_blank.png", "objective_vs_batch_size.png"} <= names
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")
    tracker.finish(tmp_path / "sweep", {"number": 2, "value": 0.35})


def test_a_configuration_that_finished_is_reported_from_storage_not_trained(tmp_path):
    from recon.core.storage import Storage
    from recon.orchestration.sweep.trial import RESULT_FILE, run_trial, trial_rel

    spec = load_sweep(FIXTURES / "base.yaml")
    params = {"pretrain.p_blank": 0.25, "pretrain.batch_size": 8}
    store = Storage.from_uri(str(tmp_path))
    tid = spec.trial_id(params, "corpus")
    store.write_json(trial_rel(spec.name, tid, RESULT_FILE), {"probes": [{"step": 2, "objective": 0.4},
                                                                          {"step": 4, "objective": 0.5}]})
    reports: list[dict] = []
    config = {**params, "sweep": {"spec": spec.payload(), "storage": store.uri, "corpus_identity": "corpus"}}
    run_trial(config, reports.append)  # no corpus, encoder or Ray here: anything but the stored result would fail
    assert reports == [{"objective": 0.5, "pretrain_step": 4, "probe": 2, "final": 1, "cached": 1, "trial_hash": tid}]
    assert not list(tmp_path.glob("**/attempts/*"))


def test_cli_plan_prints_trials_and_compute(capsys):
    from recon.orchestration.cli.main import main

    assert main(["sweep", "plan", str(ROOT / "studies" / "sweep-demo.yaml")]) == 0
    out = capsys.readouterr().out
    assert "5 trials (tpe)" in out and "probes at steps [4, 8]" in out and "estimated compute" in out


# ---------------------------------------------------------------- slow: real sweeps on a tiny BERT

def tiny_sweep(root: Path, *, trials: int = 4, extra: str = "", resources: bool = False) -> Path:
    from tiny_bert import make_tiny_bert_dir

    encoder = make_tiny_bert_dir(root, mlm=True)
    worker = ", worker_resources: {recon_worker: 1}" if resources else ""
    trial = ", trial_resources: {recon_worker: 1}" if resources else ""
    text = f"""
name: tiny-sweep
encoder: {encoder}
pretrain: {{objective: cp, corpus: {CORPUS}, lr: 2.0e-3, warmup: 0, max_length: 32, num_workers: 1,
           allow_leakage: true{worker}}}
finetune:
  dataset: semeval
  split: 0.01
  data: {{split_source: paper, max_eval: 40, max_length: 32, data_dir: {DATA}}}
  training: {{lr: 5.0e-3, batch_size: 16, epochs: 1, max_train_steps: 3}}
space:
  pretrain.p_blank: uniform(0.0, 1.0)
  pretrain.batch_size: choice([4, 8])
sampler: {{type: tpe, seed: 3, n_startup_trials: 2}}
budget: {{trials: {trials}, steps: 4, probes: 2}}
objective: {{seeds: [42], metric: accuracy}}
early_stopping: {{type: asha, grace_period: 1, reduction_factor: 2}}
ray: {{num_cpus: 2, cpus_per_trial: 1, max_retries: 0{trial}}}
output_dir: {root / 'out'}
{extra}"""
    path = root / "sweep.yaml"
    path.write_text(text)
    return path


def _attempts(storage: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for marker in storage.glob("sweeps/tiny-sweep/trials/*/attempts/*"):
        tid = marker.parent.parent.name
        counts[tid] = counts.get(tid, 0) + 1
    return counts


def _trial_runs(db: Path) -> list[tuple[str, str, str]]:
    con = sqlite3.connect(db)
    rows = con.execute("select r.run_uuid, r.status, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                       "where t.key = 'optuna_number' and r.lifecycle_stage = 'active'").fetchall()
    return rows


@pytest.mark.slow
def test_sweep_runs_end_to_end_with_mlflow_plots_and_best(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from recon.orchestration.sweep.journal import Journal, sweep_storage
    from recon.orchestration.sweep.runner import run_sweep

    spec = load_sweep(tiny_sweep(tmp_path, trials=4))
    lines: list[str] = []
    outcome = run_sweep(spec, log=lines.append)
    assert outcome.failed == [] and outcome.completed + outcome.stopped_early == 4, lines
    store = Path(sweep_storage(spec).uri)
    study = optuna.load_study(study_name=spec.name, storage=Journal(spec, sweep_storage(spec)).storage())
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 4
    assert all(set(t.params) == {"pretrain.p_blank", "pretrain.batch_size"} for t in study.trials)
    results = list(store.glob("sweeps/tiny-sweep/trials/*/result.json"))
    assert len(results) == outcome.completed
    for path in results:  # only the last checkpoint's encoder is kept
        result = json.loads(path.read_text())
        assert [p["step"] for p in result["probes"]] == [2, 4] and result["pretrain_curve"]["pretrain_loss_last"] > 0
        kept = sorted(p.name for p in (path.parent / "pretrain").glob("checkpoint_step_*"))
        assert kept == ["checkpoint_step_000004"] and not (path.parent / "pretrain" / kept[0] / "train").exists()
    runs = _trial_runs(tmp_path / "out" / "mlflow.db")
    assert sorted(int(n) for _, _, n in runs) == [t.number for t in study.trials]
    con = sqlite3.connect(tmp_path / "out" / "mlflow.db")
    parent = con.execute("select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid where "
                         "t.key = 'recon.role' and t.value = 'sweep'").fetchall()
    assert len(parent) == 1
    nested = con.execute("select count(*) from tags where key = 'mlflow.parentRunId' and value = ?",
                         parent[0]).fetchone()[0]
    assert nested == 4
    params = dict(con.execute("select key, value from params where run_uuid = ?", (runs[0][0],)).fetchall())
    assert "space.pretrain.p_blank" in params and params["pretrain.objective"] == "cp" and "probe.split" in params
    metrics = {k for (k,) in con.execute("select distinct key from metrics where run_uuid = ?", (runs[0][0],))}
    assert {"probe_objective", "pretrain/loss", "pretrain_loss_last", "objective_se", "objective_ci_lo",
            "probe_objective_ci_hi"} <= metrics
    # every probe kept its dev predictions (40 examples: max_eval), and the best report compared the trials
    for row in store.glob("sweeps/tiny-sweep/trials/*/probes/*/seed_42.json"):
        lines = (row.parent / "seed_42.dev.jsonl").read_text().splitlines()
        assert len(lines) == json.loads(row.read_text())["n_dev"] == 40
    verdict = outcome.best["verdict"]
    assert {c.number for c in verdict.comparisons} == {t.number for t in study.trials} - {outcome.best["number"]}
    assert "paired bootstrap over the same 40 dev examples" in outcome.best["snippet"]
    assert ("a winner, not noise" in outcome.best["snippet"]) != ("cannot be told apart" in outcome.best["snippet"])
    art = Path(outcome.artifacts)
    for name in ("trials.csv", "trials.md", "best_config.yaml", "plots/optimization_history.png",
                 "plots/objective_vs_p_blank.png", "plots/objective_vs_batch_size.png",
                 "plots/objective_intervals.png"):
        assert (art / name).is_file(), name
    table = (art / "trials.csv").read_text().splitlines()[0].split(",")
    assert {"objective_se", "ci_lo", "ci_hi", "n_examples", "vs_best", "p_vs_best_holm"} <= set(table)
    assert outcome.best and "p_blank:" in outcome.best["snippet"]
    print("\n".join(lines))
    print(f"completed {outcome.completed}, stopped early {outcome.stopped_early}")
    # run again: the budget is spent, nothing trains
    before = _attempts(store)
    again = run_sweep(spec, log=lines.append)
    assert again.ran == 0 and _attempts(store) == before


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    from cluster_harness import kill_tree

    path = tiny_sweep(tmp_path, trials=4)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    store = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "recon.orchestration.cli.main", "sweep", "run", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and len(list(store.glob("sweeps/tiny-sweep/trials/*/result.json"))) < 2:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(1)
    finally:
        kill_tree(proc, signal.SIGKILL)
    finished = {p.parent.name for p in store.glob("sweeps/tiny-sweep/trials/*/result.json")}
    assert len(finished) >= 2, "no two trials finished within the time limit"
    res = subprocess.run([sys.executable, "-m", "recon.orchestration.cli.main", "sweep", "resume", str(path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    attempts = _attempts(store)
    assert all(attempts[tid] == 1 for tid in finished), attempts  # a finished trial never trains again
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="tiny-sweep", storage=_journal(store))
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 4
    runs = _trial_runs(store / "mlflow.db")
    numbers = [n for _, _, n in runs]
    assert len(numbers) == len(set(numbers))  # one nested run per Optuna trial
    assert "p_blank:" in subprocess.run([sys.executable, "-m", "recon.orchestration.cli.main", "sweep", "best", str(path)],
                                        capture_output=True, text=True, env=env, cwd=tmp_path).stdout
    print(res.stdout[-3000:])
    print(f"finished before the kill: {sorted(finished)}; attempts per trial: {attempts}")


def _journal(store: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(store / "sweeps" / "tiny-sweep" / "optuna.journal")))


@pytest.mark.slow
def test_submitted_sweep_runs_its_trials_on_the_worker_node(tmp_path):
    from cluster_harness import two_node_cluster, unshare_available

    reason = unshare_available()
    if reason is not None:
        pytest.skip(f"two-node cluster harness: {reason}")
    driver = tmp_path / "driver"
    driver.mkdir()
    path = tiny_sweep(driver, trials=2, resources=True)
    with two_node_cluster(tmp_path, hidden=[driver, DATA]) as cluster:
        storage = cluster.shared / "recon"

        def recon(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "recon.orchestration.cli.main", *args], env=cluster.client_env(),
                                  capture_output=True, text=True, timeout=timeout, cwd=ROOT)

        sub = recon("submit", "--address", cluster.dashboard_url, "--storage", str(storage), "--",
                    "recon", "sweep", "run", str(path))
        assert sub.returncode == 0, sub.stdout + sub.stderr
        job = sub.stdout.splitlines()[0].split()[1].rstrip(":")
        logs = recon("jobs", "logs", job, "--follow", "--address", cluster.dashboard_url)
        log = logs.stdout + logs.stderr
        assert f"job {job} SUCCEEDED" in log, log[-4000:]
        results = [json.loads(p.read_text()) for p in storage.glob("sweeps/tiny-sweep/trials/*/result.json")]
        probes = [json.loads(p.read_text()) for p in storage.glob("sweeps/tiny-sweep/trials/*/probes/*/*.json")]
        assert results and probes
        for row in results + probes:  # every trial and every probe ran on the worker node
            assert row["node"]["node_id"] == cluster.worker_node_id != cluster.head_node_id
        assert list(storage.glob("sweeps/tiny-sweep/trials/*/pretrain/checkpoint_step_000004/model.safetensors"))
    assert "completed" in log and len(_trial_runs(driver / "out" / "mlflow.db")) == 2
