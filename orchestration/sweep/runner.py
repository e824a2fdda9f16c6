"""The sweep driver: Optuna (persisted in storage) proposes, Ray Tune runs and stops trials, MLflow records.

    spec = load_sweep("studies/sweep-demo.yaml")
    outcome = run_sweep(spec)            # also what `recon sweep resume` runs
    outcome.best                         # {"number", "value", "params", "snippet", "interval", "verdict"}

* Optuna: ``OptunaSearch`` (``ray.tune.search.optuna``) over the spec's domains with a seeded TPE
  (or random) sampler, behind a ``ConcurrencyLimiter``; a grid enqueues its points. The study lives in
  the storage location as an Optuna ``JournalStorage`` file (``sweeps/<name>/optuna.journal``; with
  an object-store URI a local copy is mirrored there after every trial).
* Tune: one trial = ``sweep.trial.sweep_trainable`` (pre-training on Ray Train inside the trial, then
  probes); the trial reports the objective at each probed checkpoint, and ASHA (or median stopping)
  stops the hopeless ones. A stopped trial is told to Optuna as PRUNED (its intermediate values
  stay), a finished one as COMPLETE.
* Resume: trials Optuna still holds as RUNNING (the driver was killed) are settled first: one whose
  ``result.json`` is in storage is told COMPLETE from it; any other is marked FAIL and its
  configuration enqueued again, so it resumes from its checkpoints and stored probes. Only
  ``budget.trials - (completed + pruned)`` new trials run; a configuration that finished before is
  never trained again (its id = hash of the resolved configs; the trial finds its ``result.json``).
* A trial the scheduler stopped keeps its probes and pre-training curve in storage; its checkpoints
  (with the optimizer state, GBs at the paper's scale) are deleted.
* MLflow: the driver alone writes (``sweep_tracking``): parent run, one nested run per trial as it
  ends, then the trials table, best configuration and plots.
* How sure: every objective carries its bootstrap interval over the probe's examples, and the best
  report (``confidence.judge``, at the head of the snippet) says whether the best trial can be told
  apart from the runner-up and the rest, or prints the settings that cannot.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from recon.core.errors import ReconError

from recon.models.pretrain.config import DEMO_CORPUS
from recon.orchestration.study.stages import demo_corpus, say
from recon.orchestration.tracking.health import TrackingGate, fail_fast_http
from recon.core.storage import Storage, resolve_storage
from recon.core.node_cache import publish_dir
from recon.orchestration.sweep.spec import SweepSpec, best_snippet
from recon.orchestration.pretrain.checkpoints import complete_checkpoints
from recon.orchestration.sweep.trial import PRETRAIN_RUN, RESULT_FILE, sweep_rel, sweep_trainable, trial_rel
from recon.orchestration.sweep.tracker import SweepTracker, trial_record, trials_frame, write_artifacts

JOURNAL = "optuna.journal"
METRIC = "objective"


@dataclass
class SweepOutcome:
    trials: int            # the budget
    finished_before: int   # completed or pruned before this run
    ran: int               # Tune trials started now
    completed: int         # completed trials in the study now
    stopped_early: int     # pruned trials in the study now
    failed: list[int] = field(default_factory=list)
    best: Optional[dict] = None
    seconds: float = 0.0
    storage: str = ""
    artifacts: str = ""
    unlogged: int = 0      # finished trials not in MLflow: the tracking server did not answer by the end
    tracking_uri: str = ""


def sweep_storage(spec: SweepSpec, override: Optional[str] = None) -> Storage:
    """``--storage``, the spec's ``storage``, ``$RECON_STORAGE``, else the sweep's output folder."""
    value = override or (str(spec.resolve_path(spec.storage)) if spec.storage and "://" not in spec.storage
                         else spec.storage)
    return Storage.from_uri(resolve_storage(value, spec.resolved_output_dir()))


class Journal:
    """Where the Optuna study is persisted: in storage when that is a path, else mirrored there."""

    def __init__(self, spec: SweepSpec, store: Storage) -> None:
        self.store, self.rel = store, sweep_rel(spec.name, JOURNAL)
        local = not ("://" in store.uri and not store.uri.startswith("file://"))
        self.path = Path(store.path(self.rel)) if local else spec.resolved_output_dir() / JOURNAL
        self.mirrored = not local
        if self.mirrored and not self.path.exists() and store.exists(self.rel):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(store.read_bytes(self.rel))

    def exists(self) -> bool:
        return self.path.is_file()

    def storage(self):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(self.path)))

    def sync(self) -> None:
        if self.mirrored and self.path.exists():
            self.store.upload_file(self.path, self.rel)


def open_study(spec: SweepSpec, journal: Journal, create: bool = True):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if spec.objective.mode == "max" else "minimize"
    if not create:
        return optuna.load_study(study_name=spec.name, storage=journal.storage())
    return optuna.create_study(study_name=spec.name, storage=journal.storage(), direction=direction,
                               load_if_exists=True)


def make_sampler(spec: SweepSpec, offset: int):
    """The spec's sampler, seeded with ``seed + trials so far`` so that a resumed TPE does not repeat itself."""
    import optuna

    seed = spec.sampler.seed + offset
    if spec.sampler.type == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.sampler.n_startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: every point is enqueued, nothing is sampled


def settle(spec: SweepSpec, study, store: Storage, corpus_identity: Any, log: Callable[[str], None]) -> dict:
    """Settle trials left RUNNING by a killed driver; enqueue the grid's open points; count what is left."""
    from optuna.trial import TrialState

    harvested = requeued = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = spec.trial_id(t.params, corpus_identity) if set(t.params) == set(spec.domains) else None
        if tid and store.exists(trial_rel(spec.name, tid, RESULT_FILE)):
            result = store.read_json(trial_rel(spec.name, tid, RESULT_FILE))
            study.tell(t.number, result["objective"])
            harvested += 1
        else:
            study.tell(t.number, state=TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
                requeued += 1
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    if spec.sampler.type == "grid":
        seen = [t.params or t.system_attrs.get("fixed_params") or {} for t in done + waiting]
        key = lambda p: tuple(sorted((k, str(v)) for k, v in p.items()))  # noqa: E731
        have = {key(p) for p in seen}
        for point in spec.grid_points():
            if key(point) not in have:
                study.enqueue_trial(point)
    if harvested or requeued:
        log(f"sweep {spec.name}: settled trials of an interrupted run: {harvested} had finished (told to Optuna "
            f"from storage), {requeued} enqueued again (they resume from their checkpoints)")
    return {"done": len(done), "harvested": harvested, "requeued": requeued}


def harvest(spec: SweepSpec, study, tracker: SweepTracker, store: Storage, corpus_identity: Any) -> int:
    """Log to MLflow the finished Optuna trials that have no run yet (the driver died before logging them)."""
    from optuna.trial import TrialState

    logged, count = tracker.trial_runs(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if str(t.number) in logged or set(t.params) != set(spec.domains):
            continue
        tid = t.user_attrs.get("trial_hash") or spec.trial_id(t.params, corpus_identity)
        record = record_of(spec, store, tid)
        tracker.log_trial(t.number, dict(t.params), "completed" if t.state == TrialState.COMPLETE else "stopped_early",
                          record)
        count += 1
    return count


def _searcher(spec: SweepSpec, journal: Journal, offset: int):
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class SweepSearch(OptunaSearch):
        """OptunaSearch that tells a trial the scheduler stopped as PRUNED (its probes stay as intermediate values)."""

        def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and result and result.get("trial_hash"):
                ot_trial.set_user_attr("trial_hash", result["trial_hash"])
            if ot_trial is not None and result and not error and not result.get("final"):
                try:
                    # Tune hands the result that made the scheduler stop the trial to on_trial_complete only
                    if result.get(METRIC) is not None:
                        ot_trial.report(float(result[METRIC]), int(result.get("training_iteration", 1)))
                    self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                except Exception:  # noqa: BLE001 - already told
                    pass
                self._completed_trials.add(trial_id)
                journal.sync()
                return
            super().on_trial_complete(trial_id, result, error)
            journal.sync()

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            super().on_trial_result(trial_id, result)
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and result.get("trial_hash"):
                ot_trial.set_user_attr("trial_hash", result["trial_hash"])

    return SweepSearch(space={path: d.optuna() for path, d in spec.domains.items()}, metric=METRIC,
                       mode=spec.objective.mode, sampler=make_sampler(spec, offset), study_name=spec.name,
                       storage=journal.storage())


def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    es, probes = spec.early_stopping, len(spec.probe_steps())
    if es.type == "asha" and probes > 1:
        return ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode=spec.objective.mode, max_t=probes,
                             grace_period=min(es.grace_period, probes), reduction_factor=es.reduction_factor)
    if es.type == "median" and probes > 1:
        return MedianStoppingRule(time_attr="training_iteration", metric=METRIC, mode=spec.objective.mode,
                                  grace_period=es.grace_period, min_samples_required=es.min_samples_required)
    return FIFOScheduler()


CLOSE_WAIT_S = 30.0  # at the end, how long to keep asking a tracking server that does not answer


class _GatedLog:
    """The sweep's MLflow logging of finished trials, surviving an outage: while the server does not answer, the
    trials wait here (their records are in storage) and are logged when it answers again."""

    def __init__(self, tracker: SweepTracker, log: Callable[[str], None]) -> None:
        self.tracker, self.gate, self.pending = tracker, TrackingGate(tracker.tracking_uri, log), []

    def log_trial(self, *args) -> None:
        self.pending.append(args)
        self.flush()

    def flush(self, force: bool = False) -> None:
        if not self.gate.up and not ((force or self.gate.due()) and self.gate.try_again()):
            return
        while self.pending:
            try:
                self.tracker.log_trial(*self.pending[0])
            except Exception as exc:  # noqa: BLE001 - an outage waits; anything else is the tracker's error
                if self.gate.is_outage(exc):
                    return
                raise
            self.pending.pop(0)

    def close(self, wait_s: float) -> bool:
        """Flush, asking a silent server every few seconds for up to ``wait_s``; True when all is logged."""
        end = time.monotonic() + wait_s
        self.flush(force=True)
        while self.pending and time.monotonic() < end:
            time.sleep(3.0)
            self.flush(force=True)
        return not self.pending and self.gate.up


def _driver_callback(spec: SweepSpec, tracker: "_GatedLog", store: Storage, states: dict[int, str],
                     log: Callable[[str], None]):
    from ray.tune import Callback

    number_of: dict[str, int] = {}

    def label(trial) -> str:
        return ", ".join(f"{p.split('.')[-1]}={_fmt(trial.config.get(p))}" for p in spec.domains)

    def finish(trial, state: str) -> None:
        params = {p: trial.config.get(p) for p in spec.domains}
        result = trial.last_result or {}
        tid = result.get("trial_hash") or spec.trial_id(params, trial.config["sweep"]["corpus_identity"])
        number = number_of.get(trial.trial_id)
        if number is None:
            return
        states[number] = state
        record = record_of(spec, store, tid)
        record["cached"] = bool(result.get("cached"))
        if state == "stopped_early":  # its probes and curve stay; checkpoints (optimizer state: GBs) go
            run = Storage.from_uri(store.join(trial_rel(spec.name, tid, PRETRAIN_RUN)))
            for rel in complete_checkpoints(run).values():
                run.delete(rel)
        tracker.log_trial(number, params, state, record)
        last = record["probes"][-1] if record["probes"] else None
        where = f" at step {last['step']}" if last else ""
        ci = (last or {}).get("uncertainty")
        sure = f" (95% CI [{ci['ci_lo']:.4f}, {ci['ci_hi']:.4f}], se {ci['se']:.4f})" if ci else ""
        score = f": {spec.objective.score_on} {last['objective']:.4f}{sure}" if last else ""
        extra = " (finished before: not trained again)" if record["cached"] else ""
        log(f"[sweep] trial {number} ({label(trial)}) {state.replace('_', ' ')}{where}{score}{extra}")

    class SweepLogger(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if trial.trial_id not in number_of:
                number_of[trial.trial_id] = _number(trial)
            log(f"[sweep] trial {number_of[trial.trial_id]} ({label(trial)}) pre-training step "
                f"{result.get('pretrain_step')}: {spec.objective.score_on} {result.get(METRIC, float('nan')):.4f}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            number_of.setdefault(trial.trial_id, _number(trial))
            finish(trial, "completed" if (trial.last_result or {}).get("final") else "stopped_early")

        def on_trial_error(self, iteration, trials, trial, **info):
            number_of.setdefault(trial.trial_id, _number(trial))
            finish(trial, "failed")

    def _number(trial) -> Optional[int]:
        return searcher_numbers.get(trial.trial_id)

    searcher_numbers: dict[str, int] = {}
    return SweepLogger(), searcher_numbers


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def prepare_inputs(spec: SweepSpec, store: Storage, log: Callable[[str], None]) -> dict:
    """Corpus (the @demo one is built once), starting encoder and the probe's dataset, published in storage."""
    from recon.data_prep.corpus import read_manifest, require_exclusions

    from recon.orchestration.study.data import publish_study_data

    pretrain, probe = spec.resolve({})
    data_root = spec.data_root()
    corpus = Path(demo_corpus(store, spec.evaluated_datasets(), data_root, log) if pretrain.corpus == DEMO_CORPUS
                  else spec.resolve_path(pretrain.corpus))
    read_manifest(corpus)
    leakage = require_exclusions(str(corpus), spec.evaluated_datasets(), allow_leakage=pretrain.allow_leakage,
                                 data_dir=data_root)
    if not leakage.ok:
        log(f"sweep {spec.name}: the corpus keeps entity pairs of {', '.join(leakage.not_excluded)} (allow_leakage)")
    corpus_uri, corpus_digest = publish_dir(store, corpus, "inputs/corpora")
    encoder: Any = pretrain.encoder_name
    if Path(encoder).expanduser().is_dir():
        uri, digest = publish_dir(store, Path(encoder).expanduser(), "inputs/encoders")
        encoder = {"uri": uri, "digest": digest}
    data = publish_study_data([probe.dataset], data_root, store)
    if not data:
        raise ReconError(f"dataset {probe.dataset!r} not found (data dir {data_root}); see `recon data status`")
    return {"corpus": {"uri": corpus_uri, "digest": corpus_digest}, "encoder": encoder, "data": data}


def record_of(spec: SweepSpec, store: Storage, trial_id: str) -> dict:
    """``tracker.trial_record`` with the spec's probe schedule, seeds and objective."""
    return trial_record(store, spec.name, trial_id, spec.probe_steps(), spec.objective.seeds, spec.objective.metric,
                        spec.objective.score_on)


def all_records(spec: SweepSpec, study, store: Storage, corpus_identity: Callable[[], Any]) -> dict[int, dict]:
    """Every trial's record in storage (``corpus_identity`` is called only for a trial without its hash)."""
    records = {}
    for t in study.get_trials(deepcopy=False):
        if set(t.params) == set(spec.domains):
            tid = t.user_attrs.get("trial_hash") or spec.trial_id(t.params, corpus_identity())
            records[t.number] = record_of(spec, store, tid)
    return records


STATES = {"COMPLETE": "completed", "PRUNED": "stopped_early", "FAIL": "failed"}


def best_trial(spec: SweepSpec, study, records: Optional[dict[int, dict]] = None) -> Optional[dict]:
    """The best completed trial (never a stopped one): number, value, params, the study snippet and, with the
    trials' ``records``, how sure the sweep is of it (``confidence.judge``: ``interval``, ``verdict``, whose
    sentences head the snippet as comments)."""
    from optuna.trial import TrialState

    from recon.orchestration.sweep.confidence import entries_from, judge, verdict_lines

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    pick = max if spec.objective.mode == "max" else min
    best = pick(done, key=lambda t: t.value)
    params = {p: best.params[p] for p in spec.domains if p in best.params}
    score = f"{spec.objective.score_on} {spec.objective.metric}"
    entries = entries_from([(t.number, _label(spec, t.params), STATES.get(t.state.name, t.state.name.lower()))
                            for t in study.get_trials(deepcopy=False)], records or {})
    verdict = judge(entries, best.number, spec.objective.mode) if best.number in entries else None
    interval = entries[best.number].interval if best.number in entries else None
    sure = (f", 95% CI [{interval['ci_lo']:.4f}, {interval['ci_hi']:.4f}] over {interval['n_examples']:.0f} "
            "examples" if interval else "")
    head = (f"# best of sweep {spec.name}: trial {best.number}, {spec.objective.score_on} "
            f"{best.value:.4f}{sure} ({spec.finetune.dataset} {spec.finetune.split:g}, median over seeds "
            f"{spec.objective.seeds})\n")
    lines = verdict_lines(verdict, entries, score) if verdict is not None else []
    head += "".join(f"# {line}\n" for line in lines)
    return {"number": best.number, "value": best.value, "params": params, "head": head, "interval": interval,
            "verdict": verdict, "lines": lines, "snippet": head + best_snippet(spec, params)}


def _label(spec: SweepSpec, params: dict) -> str:
    return ", ".join(f"{p.split('.')[-1]}={_fmt(params.get(p))}" for p in spec.domains)


def _refuse_if_any(spec: SweepSpec, problems: list) -> None:
    from recon.core.preflight import Preflight

    pf = Preflight(f"sweep {spec.name}")
    pf.extend(problems)
    pf.raise_if_any()


def run_sweep(spec: SweepSpec, *, address: Optional[str] = None, num_cpus: Optional[int] = None,
              tracking_uri: Optional[str] = None, storage: Optional[str] = None, resume: bool = False,
              log: Callable[[str], None] = say) -> SweepOutcome:
    """Run (or continue) the sweep until its budget of completed + stopped trials is spent."""
    from optuna.trial import TrialState
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from recon.core.ray_session import cluster_to_join, ensure_ray
    from recon.orchestration.sweep.preflight import sweep_cluster_problems, sweep_problems

    start = time.time()
    fail_fast_http()  # an MLflow call to a server that is down fails in seconds, not minutes
    store = sweep_storage(spec, storage)
    journal = Journal(spec, store)
    if resume and not journal.exists():
        raise ReconError(f"sweep {spec.name!r} has not been started (no {journal.path}): use `recon sweep run`")
    out_dir = spec.resolved_output_dir()
    uri = tracking_uri or spec.resolved_tracking_uri()
    _refuse_if_any(spec, sweep_problems(spec, store, uri, log=log,
                                        local_ray=cluster_to_join(address or spec.ray.address) is None))
    tracker = SweepTracker(uri, spec.name, out_dir / "artifacts")
    gated = _GatedLog(tracker, log)
    tracker.parent_run_id({"space": {p: d.describe() for p, d in spec.domains.items()},
                           "sampler": spec.sampler.model_dump(), "budget": spec.budget.model_dump(),
                           "objective": spec.objective.model_dump(), "early_stopping": spec.early_stopping.model_dump(),
                           "probe_steps": spec.probe_steps()})
    corpus_identity = spec.corpus_identity()
    study = open_study(spec, journal)
    settled = settle(spec, study, store, corpus_identity, log)
    journal.sync()
    harvest(spec, study, tracker, store, corpus_identity)
    budget = spec.trials_budget()
    remaining = max(0, budget - settled["done"])
    log(f"sweep {spec.name}: {budget} trials ({spec.sampler.type}), {settled['done']} finished before, "
        f"{remaining} to run; probes at pre-training steps {spec.probe_steps()} (storage {store.uri})")
    states: dict[int, str] = {}
    failed: list[int] = []
    ran = 0
    if remaining:
        started = ensure_ray(address=address or spec.ray.address, num_cpus=num_cpus or spec.ray.num_cpus)
        try:
            _refuse_if_any(spec, sweep_cluster_problems(spec, store))
            inputs = prepare_inputs(spec, store, log)
            payload = {"spec": spec.payload(), "storage": store.uri, "corpus_identity": corpus_identity,
                       "threads": max(1, int(spec.ray.cpus_per_trial)), **inputs}
            searcher = _searcher(spec, journal, offset=len(study.trials))
            callback, numbers = _driver_callback(spec, gated, store, states, log)

            class Numbered(ConcurrencyLimiter):
                def suggest(self, trial_id: str):
                    config = super().suggest(trial_id)
                    ot_trial = searcher._ot_trials.get(trial_id)
                    if ot_trial is not None:
                        numbers[trial_id] = ot_trial.number
                    return config

            resources = {"cpu": spec.ray.cpus_per_trial, "gpu": spec.ray.gpus_per_trial, **spec.ray.trial_resources}
            from recon.core.ray_session import lean_tune

            lean_tune()
            tuner = tune.Tuner(
                tune.with_resources(sweep_trainable, resources),
                param_space={"sweep": payload},
                tune_config=tune.TuneConfig(search_alg=Numbered(searcher, max_concurrent=spec.budget.concurrency),
                                            scheduler=_scheduler(spec), num_samples=remaining),
                run_config=tune.RunConfig(name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                          storage_path=store.join(sweep_rel(spec.name, "tune")),
                                          failure_config=tune.FailureConfig(max_failures=spec.ray.max_retries),
                                          callbacks=[callback], verbose=0),
            )
            grid = tuner.fit()
            ran = len(grid)
            failed = sorted(n for n, s in states.items() if s == "failed")
        finally:
            if started:
                import ray

                ray.shutdown()
    logged_all = gated.close(CLOSE_WAIT_S)
    study = open_study(spec, journal)
    artifacts = out_dir / "sweep"
    all_states = {t.number: STATES.get(t.state.name, t.state.name.lower()) for t in study.get_trials(deepcopy=False)}
    all_states.update(states)
    records = all_records(spec, study, store, lambda: corpus_identity)
    best = best_trial(spec, study, records)
    frame = trials_frame(study, all_states, records, best["verdict"] if best else None)
    write_artifacts(study, frame, artifacts, list(spec.domains),
                    f"{spec.objective.score_on} {spec.objective.metric} ({spec.finetune.dataset})",
                    best["snippet"] if best else None, records)
    if logged_all:
        tracker.finish(artifacts, best)
    else:
        log(f"sweep {spec.name}: {len(gated.pending)} finished trial(s) are not in MLflow: the tracking server "
            f"{tracker.tracking_uri} did not answer. Their records are in storage ({store.uri}) and the artifacts were "
            f"written from there; when it answers, `recon sweep resume` logs them (nothing trains again).")
    journal.sync()
    trials = study.get_trials(deepcopy=False)
    return SweepOutcome(trials=budget, finished_before=settled["done"], ran=ran,
                        completed=sum(t.state == TrialState.COMPLETE for t in trials),
                        stopped_early=sum(t.state == TrialState.PRUNED for t in trials), failed=failed, best=best,
                        seconds=round(time.time() - start, 1), storage=store.uri, artifacts=str(artifacts),
                        unlogged=len(gated.pending), tracking_uri=tracker.tracking_uri)


def load_best(spec: SweepSpec, storage: Optional[str] = None) -> Optional[dict]:
    """The best completed trial of a sweep that has run (from its Optuna study in storage), with the
    distinguishability report read from the probes' predictions in storage."""
    journal = Journal(spec, sweep_storage(spec, storage))
    if not journal.exists():
        raise ReconError(f"sweep {spec.name!r} has not been started (no {journal.path}): use `recon sweep run`")
    study = open_study(spec, journal, create=False)
    records = all_records(spec, study, sweep_storage(spec, storage), functools.cache(spec.corpus_identity))
    return best_trial(spec, study, records)


__all__ = ["run_sweep", "SweepOutcome", "sweep_storage", "load_best", "best_trial", "settle", "harvest", "Journal",
           "open_study"]
