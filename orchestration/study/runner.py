"""The study driver: run a study's trials on Ray Tune, one Tune trial per grid cell x seed (or few-shot setting).

    spec = load_spec("studies/demo.yaml")
    outcome = run_study(spec)                 # local Ray, or the spec's / CLI's cluster address
    outcome.failed, outcome.logged

How it fits together (each job in its own module)
* ``plan``: the trials and their ids; trials already FINISHED in MLflow are skipped, so ``run``
  after an interruption (and ``resume``) continues without repeating work.
* ``storage``: one location (a path, NFS, ``s3://``...) that every node reads and writes; the
  driver's own disk holds only the MLflow store (when local) and the summary.
* ``stages``: pre-training stages named by models (``@pretrain.<stage>``) run first; their final
  encoders are published in storage and fetched by trials once per node.
* ``study_data``: the driver publishes the datasets' files; trials rebuild them from their node's cache.
* ``kept``: finished trials lacking a view their grid now asks for are scored on their kept weights (one
  CPU-only Ray task each, no training) and the views added to their MLflow runs; without kept weights they
  are left as they are (``recon study plan`` prices training them again).
* ``trials`` / ``trainable``: what a trial runs on its node; its outputs go to
  ``<storage>/results/<trial id>/`` (``result.json`` last), and its final report carries the metrics.
* here: the Tune run, and a Tune callback through which the driver logs each completed trial to
  MLflow from storage as it finishes (one writer). Trials that finished but were not logged
  (driver killed in between) are logged from storage at the next start ("harvest").
"""
from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from recon.orchestration.study.trial import Trial
from recon.orchestration.study.kept import evaluate_from_weights, split_lacking
from recon.orchestration.study.plan import expand, unavailable_trials, views_lacking
from recon.orchestration.study.spec import StudySpec
from recon.orchestration.study.stages import ensure_pretrained, say, study_data_dir
from recon.core.hardware import cpu_bf16_name
from recon.core.storage import Storage, resolve_storage
from recon.orchestration.study.data import FEWSHOT_NEEDS, publish_local_models, publish_study_data
from recon.orchestration.study.trainable import result_rel, tune_trainable
from recon.orchestration.study.tracker import StudyTracker
from recon.orchestration.study.trainers import load_evaluator, trainer_source
from recon.orchestration.study.writer import TrialWriter
from recon.orchestration.study.preflight import (cluster_problems, fetch_missing_data, study_files_needed,
                                                  study_problems)
from recon.orchestration.tracking.health import fail_fast_http
from recon.orchestration.tracking.uri import local_store_exists
from recon.core.preflight import Preflight
from recon.core.ray_session import cluster_to_join
from recon.orchestration.study.progress import _WRITERS, CLOSE_WAIT_S, Progress, _driver_callback, _waiting


def log_from_storage(tracker: StudyTracker, trial: Trial, storage: Storage) -> bool:
    """Log one trial to MLflow from its outputs in storage; False when it has no complete result there."""
    if not storage.exists(result_rel(trial.trial_id)):
        return False
    result = storage.read_json(result_rel(trial.trial_id))
    weights = (result.get("weights") or {}).get("file") if isinstance(result.get("weights"), dict) else None
    prefix = result_rel(trial.trial_id, "")
    with tempfile.TemporaryDirectory(prefix="recon-log-") as tmp:
        local = Path(tmp) / trial.trial_id
        for rel in storage.list(prefix):  # kept weights stay in storage, never in MLflow's artifacts
            name = rel[len(prefix):]
            if name != weights:
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                (local / name).write_bytes(storage.read_bytes(rel))
        local.mkdir(parents=True, exist_ok=True)
        tracker.log_trial(trial, result, local)
    return True


@dataclass
class StudyOutcome:
    trials: int
    skipped: int       # already finished in MLflow before this run
    harvested: int     # finished in storage, logged now without training
    ran: int
    failed: list[str]  # trial ids
    logged: int        # finished trials in MLflow now
    seconds: float
    unavailable: int = 0  # trials whose data is missing here (listed by `recon study plan`)
    storage: str = ""
    unlogged: list[str] = field(default_factory=list)  # finished (in storage), not in MLflow: the server was down
    tracking_uri: str = ""
    evaluated: list[str] = field(default_factory=list)  # finished trials whose new views came from kept weights
    views_failed: list[str] = field(default_factory=list)  # finished trials whose kept weights could not be scored
    views_not_scored: list[str] = field(default_factory=list)  # finished trials lacking views, no weights kept


def stale_runs(trials: Sequence[Trial], runs: dict[str, Any]) -> int:
    """Finished runs whose labels (dataset, setting, format, model, seed) match a planned trial
    that is not finished: the same cell logged under an id the current config no longer gives."""
    planned = {t.trial_id for t in trials}
    todo = {(t.dataset, t.setting, t.format, t.model, str(t.seed)) for t in trials if t.trial_id not in runs}
    return sum(1 for tid, run in runs.items() if tid not in planned and
               tuple(run.data.tags.get(k) for k in ("dataset", "setting", "format", "model", "seed")) in todo)


def harvest(trials: Sequence[Trial], tracker: StudyTracker, storage: Storage, finished: set[str]) -> int:
    """Log trials that completed (``result.json`` in storage) but never reached MLflow."""
    count = 0
    for trial in trials:
        if trial.trial_id not in finished and log_from_storage(tracker, trial, storage):
            count += 1
            finished.add(trial.trial_id)
    return count


def evaluable_by(spec: StudySpec) -> Callable[[Trial], bool]:
    """Whether a trial's trainer can score its kept weights on views (``trainers.load_evaluator``)."""
    base_dir = spec.source.parent if spec.source else Path.cwd()
    source = trainer_source(spec.trainer, base_dir)
    answers: dict[str, bool] = {}

    def can(trial: Trial) -> bool:
        if trial.kind not in answers:
            answers[trial.kind] = load_evaluator(source, trial.kind) is not None
        return answers[trial.kind]
    return can


def views_from_weights(spec: StudySpec, trials: Sequence[Trial], runs: dict[str, Any], store: Storage,
                       missing: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Finished trials lacking views their grid asks for: (scored from kept weights, needing training again);
    trials whose data is missing here are left out of both."""
    lacking = {tid: views for tid, views in views_lacking(trials, runs).items() if tid not in missing}
    return split_lacking(trials, lacking, store, evaluable_by(spec)) if lacking else ({}, {})


def _init_ray(spec: StudySpec, address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS) or start a local Ray; True when we started it."""
    from recon.core.ray_session import ensure_ray

    return ensure_ray(address=address or spec.ray.address, num_cpus=num_cpus or spec.ray.num_cpus)


def study_storage(spec: StudySpec, override: Optional[str] = None) -> Storage:
    """The study's storage: ``--storage``, the spec's ``storage``, ``$RECON_STORAGE``, else its output folder."""
    value = override or (str(spec.resolve_path(spec.storage)) if spec.storage and "://" not in spec.storage
                         else spec.storage)
    return Storage.from_uri(resolve_storage(value, spec.resolved_output_dir()))


def run_study(spec: StudySpec, *, address: Optional[str] = None, num_cpus: Optional[int] = None,
              tracking_uri: Optional[str] = None, storage: Optional[str] = None, base_url: Optional[str] = None,
              log: Callable[[str], None] = say) -> StudyOutcome:
    """Run every unfinished trial of ``spec`` on Ray Tune and log each to MLflow as it finishes.

    Before anything is created: public datasets that are missing are fetched (``base_url``: a mirror), and
    :mod:`recon.orchestration.study.preflight` refuses with every problem it finds; after Ray starts, the
    cluster checks run before any stage or trial. The study's parent MLflow run ends FAILED on an error and
    KILLED on an interrupt, never left RUNNING.
    """
    start = time.time()
    fail_fast_http()  # an MLflow call to a server that is down fails in seconds, not minutes
    out_dir = spec.resolved_output_dir()
    store = study_storage(spec, storage)
    trials = expand(spec)
    uri = tracking_uri or spec.resolved_tracking_uri()
    known = StudyTracker(uri, spec.name, create=False) if local_store_exists(uri) else None
    runs = known.trial_runs() if known is not None and known.exists else {}
    todo = [t for t in trials if t.trial_id not in runs]
    data_dir = spec.resolve_path(spec.data.data_dir) if spec.data.data_dir else None
    fetch_missing_data(study_files_needed(spec, todo, store), data_dir, base_url, log)
    missing = unavailable_trials(spec, trials, study_data_dir(spec))
    runnable = [t for t in todo if t.trial_id not in missing]
    evaluable = views_from_weights(spec, trials, runs, store, missing)[0]
    joins = cluster_to_join(address or spec.ray.address) is not None
    pf = Preflight(f"study {spec.name}")
    pf.extend(study_problems(spec, runnable, store, uri, local_ray=not joins))
    if todo and not runnable:
        reasons = sorted({missing[t.trial_id] for t in todo})
        pf.add(f"none of the {len(todo)} unfinished trials can run here ({'; '.join(reasons)[:600]})",
               "supply the data (`recon study plan` lists what each cell lacks)")
    pf.raise_if_any()

    started_ray = _init_ray(spec, address, num_cpus) if runnable or evaluable else False
    try:
        if runnable:
            pf = Preflight(f"study {spec.name}")
            pf.extend(cluster_problems(spec, runnable, store))
            pf.raise_if_any()
        tracker = StudyTracker(uri, spec.name, out_dir / "artifacts")
        parent = tracker.study_run_id()
        try:
            return _run_tracked(spec, trials, tracker, store, missing, start, log,
                                functools.partial(_init_ray, spec, address, num_cpus))
        except KeyboardInterrupt:
            tracker.end_study_run(parent, "KILLED")
            raise
        except BaseException:
            tracker.end_study_run(parent, "FAILED")
            raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _run_tracked(spec: StudySpec, trials: Sequence[Trial], tracker: StudyTracker, store: Storage,
                 missing: dict[str, str], start: float, log: Callable[[str], None],
                 start_ray: Callable[[], bool] = lambda: False) -> StudyOutcome:
    """The study once its checks passed and Ray is up (when anything runs): harvest, stages, data, views from
    kept weights, the grid (``start_ray`` starts Ray when only harvested trials turn out to need it)."""
    runs = tracker.trial_runs()
    finished = set(runs)
    skipped = sum(t.trial_id in finished for t in trials)
    stale = stale_runs(trials, runs)
    if stale:
        log(f"study {spec.name}: {stale} finished run(s) in MLflow match a planned cell and seed but not its trial id "
            "(logged under another config, or by a recon before the configuration tree changed the ids): they are "
            "kept, not reused, and those trials run again")
    harvested = harvest(trials, tracker, store, finished)
    data_root = study_data_dir(spec)
    pending = [t for t in trials if t.trial_id not in finished and t.trial_id not in missing]
    log(f"study {spec.name}: {len(trials)} trials, {skipped} already in MLflow, {harvested} logged from storage, "
        f"{len(missing)} cannot run here (no data; see `recon study plan`), {len(pending)} to run "
        f"(storage {store.uri})")
    if any((t.config.get("training") or t.config.get("settings", {}).get("training", {})).get("cpu_bf16")
           for t in pending):
        log(f"precision: bf16 autocast on CPU workers (this machine: {cpu_bf16_name()}); training.cpu_bf16: false "
            "trains in float32 (GPU trials follow training.bf16)")
    runs = tracker.trial_runs() if harvested else runs
    from_weights, retrain = views_from_weights(spec, trials, runs, store, missing)
    if retrain:
        log(f"study {spec.name}: {len(retrain)} finished trial(s) lack test views their grid asks for "
            f"({', '.join(sorted({v for vs in retrain.values() for v in vs}))}) and kept no weights: they are not "
            "trained again (`recon study plan` says what that would cost)")
    failed: list[str] = []
    evaluated: list[str] = []
    views_failed: list[str] = []
    unlogged: list[str] = []
    work = [*pending, *(t for t in trials if t.trial_id in from_weights)]
    if work:
        stages = sorted({spec.model(t.model).pretrain_ref for t in work} - {None})
        checkpoints = ensure_pretrained(spec, stages, tracker.tracking_uri, store, log)
        checkpoints.update(publish_local_models([t.config for t in work], store))
        needed = {t.dataset for t in work} | (set(FEWSHOT_NEEDS) if any(t.kind == "fewshot" for t in work)
                                              else set())
        data = publish_study_data(needed, data_root, store)
        if from_weights:
            evaluated, views_failed = _views_from_weights(spec, trials, from_weights, tracker, runs, store,
                                                          checkpoints, data, log, start_ray)
        if pending:
            failed, unlogged = _tune(spec, pending, tracker, store, checkpoints, data, log)
    if unlogged:  # the server did not answer at the end: count from what this run knows, not from MLflow
        logged = skipped + harvested + len(pending) - len(failed) - len(unlogged)
    else:
        logged = len(tracker.finished_trial_ids() & {t.trial_id for t in trials})
    return StudyOutcome(trials=len(trials), skipped=skipped, harvested=harvested, ran=len(pending),
                        failed=failed, logged=logged, seconds=round(time.time() - start, 1),
                        unavailable=len(missing), storage=store.uri, unlogged=unlogged,
                        tracking_uri=tracker.tracking_uri, evaluated=evaluated, views_failed=views_failed,
                        views_not_scored=sorted(retrain))


def _views_from_weights(spec: StudySpec, trials: Sequence[Trial], todo: dict[str, list[str]], tracker: StudyTracker,
                        runs: dict[str, Any], store: Storage, checkpoints: dict[str, dict], data: dict,
                        log: Callable[[str], None], start_ray: Callable[[], bool]) -> tuple[list[str], list[str]]:
    """Finished trials' missing views scored on their kept weights (``recon.orchestration.study.kept``), CPU-only
    Ray tasks, one per trial, before the grid's training; their MLflow runs get the views."""
    import ray

    started = start_ray() if not ray.is_initialized() else False
    base_dir = spec.source.parent if spec.source else Path.cwd()
    base = {"storage": store.uri, "checkpoints": checkpoints, "data": data,
            "trainer": trainer_source(spec.trainer, base_dir), "threads": max(1, int(spec.ray.cpus_per_trial))}
    log(f"study {spec.name}: {len(todo)} finished trial(s) lack views their grid asks for and kept their weights: "
        "scoring the views on them (no training)")
    try:
        return evaluate_from_weights(todo, {t.trial_id: t for t in trials}, base, tracker, runs, store,
                                     max(1.0, float(spec.ray.cpus_per_trial)), log)
    finally:
        if started:
            ray.shutdown()


def _tune(spec: StudySpec, pending: Sequence[Trial], tracker: StudyTracker, store: Storage,
          checkpoints: dict[str, dict], data: dict, log: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """The grid on Ray Tune; returns the failed trials and the finished ones that are not in MLflow (the
    tracking server did not answer by the end: their results are in storage)."""
    from ray import tune

    base_dir = spec.source.parent if spec.source else Path.cwd()
    param_space = {
        "trial": tune.grid_search([t.to_dict() for t in pending]),
        "storage": store.uri, "checkpoints": checkpoints, "data": data,
        "trainer": trainer_source(spec.trainer, base_dir), "threads": max(1, int(spec.ray.cpus_per_trial)),
    }
    resources = {"cpu": spec.ray.cpus_per_trial, "gpu": spec.ray.gpus_per_trial, **spec.ray.trial_resources}
    # Tune checkpoints its callbacks: only a module-level function can go with them (pickled by name).
    picklable = "<locals>" not in getattr(log, "__qualname__", "<locals>") and log is not print
    by_id = {t.trial_id: t for t in pending}
    writer = TrialWriter(tracker, store, by_id, log if picklable else say, log_from_storage)
    _WRITERS[spec.name] = writer
    progress = Progress(len(pending), spec.ray.max_concurrent_trials, log if picklable else say,
                        functools.partial(_waiting, spec.name))

    def name_of(trial) -> str:
        return trial.config["trial"]["trial_id"]

    from recon.core.ray_session import lean_tune

    lean_tune()
    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.ray.max_concurrent_trials,
                                    trial_name_creator=name_of, trial_dirname_creator=name_of,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=store.join("tune"),
            failure_config=tune.FailureConfig(max_failures=spec.ray.max_retries),
            callbacks=[_driver_callback(spec.name, progress)],
            verbose=0,
        ),
    )
    try:
        grid = tuner.fit()
    except BaseException:  # Ctrl-C or a driver error: stop now; what is not logged is in storage (resume logs it)
        writer.abandon()
        _WRITERS.pop(spec.name, None)
        raise
    unlogged = writer.close(CLOSE_WAIT_S)
    _WRITERS.pop(spec.name, None)
    failed = []
    for result in grid:
        tid = result.config["trial"]["trial_id"] if result.config else None
        if result.error is not None or tid is None or not store.exists(result_rel(tid)):
            failed.append(tid or "?")
            lines = [line for line in str(result.error or "no result").splitlines() if line.strip()]
            error = lines[-1] if lines else "no result"
            if tid in by_id and writer.gate.up:  # a FAILED run with the error; `resume` runs the trial again
                try:
                    tracker.log_failed_trial(by_id[tid], error, spec.ray.max_retries + 1)
                except Exception:  # noqa: BLE001 - the failure is reported here and in the outcome anyway
                    pass
            log(f"trial {tid} failed: {error}")
    return failed, [tid for tid in unlogged if tid not in failed]


__all__ = ["run_study", "StudyOutcome", "evaluable_by", "views_from_weights", "harvest", "log_from_storage", "stale_runs", "study_storage", "Progress"]
