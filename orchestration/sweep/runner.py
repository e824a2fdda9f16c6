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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from recon.core.errors import ReconError

from recon.models.pretrain.config import DEMO_CORPUS
from recon.orchestration.study.stages import demo_corpus, say
from recon.orchestration.tracking.health import fail_fast_http
from recon.core.storage import Storage
from recon.core.node_cache import publish_dir
from recon.orchestration.sweep.spec import SweepSpec
from recon.orchestration.sweep.trial import METRIC, sweep_rel, sweep_trainable
from recon.orchestration.sweep.tracker import SweepTracker, trials_frame, write_artifacts
from recon.orchestration.sweep.journal import Journal, make_sampler, open_study, settle, sweep_storage
from recon.orchestration.sweep.records import STATES, all_records, best_trial
from recon.orchestration.sweep.driver_log import CLOSE_WAIT_S, _GatedLog, _driver_callback, harvest


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


__all__ = ["run_sweep", "SweepOutcome"]
