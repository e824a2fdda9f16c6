"""Run a study's trials on Ray Tune: one Tune trial per grid cell x seed (or few-shot setting).

    spec = load_spec("studies/demo.yaml")
    outcome = run_study(spec)                 # local Ray (ray.init(num_cpus=...)) or spec/CLI address
    outcome.failed, outcome.logged

How it fits together
* The trial ids come from :mod:`recon.orchestration.plan`; trials already FINISHED in MLflow are skipped,
  so ``run`` after an interruption (and ``resume``) continues without repeating work.
* Each trial calls the training loop (``recon.models.finetune.run_finetune`` or ``recon.models.fewshot.run_fewshot``,
  or the spec's ``trainer``) with a callback that reports every epoch to Tune (``tune.report``),
  and writes ``result.json`` (atomically) plus the loop's own files into
  ``<output_dir>/trials/<trial_id>/``. Trials never touch MLflow.
* The driver's Tune callback logs each completed trial to MLflow as it finishes (one writer).
  Trials that finished but were not logged (driver killed in between) are logged from their
  ``result.json`` at the next start ("harvest"), without training again.
* Pre-training stages named by models (``@pretrain.<stage>``) run first, in the driver, through
  :func:`run_pretrain_stage`; their checkpoint is reused when its directory is complete.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from recon.data_prep.atomic import write_text_atomic
from recon.data_prep.errors import ReconError

from .plan import Trial, expand, unavailable_trials
from recon.models.finetune import CHECKPOINT_PREFIX
from recon.models.pretrain_config import DEMO_CORPUS, PretrainConfig

from .spec import StudySpec
from .tracking import StudyTracker

RESULT_FILE = "result.json"


def say(message: str) -> None:
    """Default progress output; a module function (pickled by reference, unlike a patched ``print``)."""
    print(message, flush=True)

STAGE_DONE = "recon_stage.json"


@dataclass
class TrialRequest:
    """What a trainer gets: the trial, its config with this node's locations filled in, and its folder.

    ``config`` is ``trial.runner_config()`` (the very config the trial id hashes) with the
    references resolved here: ``@pretrain.<stage>`` -> the stage's checkpoint directory, the data
    directory -> the driver's, resolved to an absolute path.
    """

    trial: Trial
    out_dir: Path
    config: Any = None
    data_dir: Optional[str] = None


Trainer = Callable[[TrialRequest, Sequence[Any]], dict]


def resolve_references(trial: Trial, checkpoints: dict[str, str], data_dir: Optional[str]) -> Any:
    """The trial's runner config with ``@pretrain.<stage>`` and the data directory resolved."""
    cfg = trial.runner_config()
    if trial.kind == "finetune":
        model = checkpoints.get(cfg.model, cfg.model)
        if model.startswith(CHECKPOINT_PREFIX):
            raise ReconError(f"trial {trial.trial_id}: {model} has no checkpoint (its stage did not run)")
        return cfg.replace(model=model, data=cfg.data.replace(data_dir=data_dir),
                           training=cfg.training.replace(progress=False))
    encoder = checkpoints.get(cfg.encoder, cfg.encoder)
    if encoder.startswith(CHECKPOINT_PREFIX):
        raise ReconError(f"trial {trial.trial_id}: {encoder} has no checkpoint (its stage did not run)")
    training = cfg.settings.training.replace(progress=False)
    return cfg.replace(encoder=encoder, data_dir=data_dir, settings=cfg.settings.replace(training=training))


# ---------------------------------------------------------------- trainers

def finetune_trial(request: TrialRequest, callbacks: Sequence[Any]) -> dict:
    """Default supervised trainer: ``recon.models.finetune.run_finetune`` on the request's config."""
    from recon.models.finetune import run_finetune

    return run_finetune(request.config, callbacks=callbacks, out_dir=request.out_dir)


def fewshot_trial(request: TrialRequest, callbacks: Sequence[Any]) -> dict:
    """Default few-shot trainer: ``recon.models.fewshot.run_fewshot`` (its ``notes`` say what it trained on)."""
    from recon.models.fewshot import run_fewshot

    return run_fewshot(request.config, callbacks=callbacks, out_dir=request.out_dir)


def resolve_trainer(name: Optional[str], kind: str, base_dir: Optional[Path] = None) -> Trainer:
    """The spec's ``trainer`` ("package.module:function" or "path/file.py:function"), else the default."""
    if not name:
        return finetune_trial if kind == "finetune" else fewshot_trial
    target, _, func = name.rpartition(":")
    if not target or not func:
        raise ReconError(f"trainer {name!r} must look like 'module:function' or 'file.py:function'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise ReconError(f"trainer file {path} not found")
        module_name = f"recon_trainer_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    try:
        return getattr(module, func)
    except AttributeError:
        raise ReconError(f"trainer {name!r}: no function {func!r}") from None


# ---------------------------------------------------------------- inside a Tune trial

class TuneReporter:
    """Training-loop callback: every epoch's metrics go to Tune (numbers only)."""

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        from ray import tune

        row = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tune.report({**row, "epoch": epoch, "done": False})

    def on_train_end(self, result: Any) -> None:
        pass


def write_result(out_dir: Path, result: dict) -> Path:
    """``result.json`` via a temporary file and a rename: present means complete."""
    return write_text_atomic(out_dir / RESULT_FILE, json.dumps(result, indent=2, default=str) + "\n")


def tune_trainable(config: dict) -> None:
    """The function Tune runs: one trial, results to its trial dir, a final report with the test metric."""
    import torch
    from ray import tune

    from .tracking import final_metrics

    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    trial = Trial.from_dict(config["trial"])
    request = TrialRequest(trial=trial, out_dir=Path(config["trials_dir"]) / trial.trial_id,
                           config=resolve_references(trial, config["checkpoints"], config.get("data_dir")),
                           data_dir=config.get("data_dir"))
    trainer = resolve_trainer(config.get("trainer"), trial.kind, Path(config["base_dir"]))
    start = time.time()
    result = trainer(request, [TuneReporter()])
    result.setdefault("seconds", round(time.time() - start, 3))
    write_result(request.out_dir, result)
    final = final_metrics(trial, result)
    tune.report({**final, "done": True})


# ---------------------------------------------------------------- pre-training stages

def _corpus_dir(spec: StudySpec, stage: PretrainConfig, log: Callable[[str], None]) -> str:
    """The stage's corpus directory; ``@demo`` builds the demo corpus from local benchmarks once."""
    if stage.corpus != DEMO_CORPUS:
        return str(spec.resolve_path(stage.corpus))
    # The anchored variant, without the entity pairs of every dataset the study evaluates on. The
    # demo corpus IS Wiki80 dev + FewRel val text, so for a study evaluated on those it comes out
    # nearly empty (and CP says so): it suits SemEval/ChemProt studies.
    evaluated = spec.evaluated_datasets()
    variant = "with_anchors_excluding_" + "_".join(evaluated)
    out = spec.resolved_output_dir() / "corpus-demo"
    if not (out / variant / "manifest.json").is_file():
        from recon.data_prep.corpus.demo_from_benchmarks import run_demo

        log(f"pretrain: building the demo corpus (FewRel val_wiki + Wiki80 dev as raw text, without the "
            f"entity pairs of {', '.join(evaluated)}) -> {out / variant}")
        run_demo(out, data_dir=study_data_dir(spec), log=log,
                 runs={variant: ("anchored.jsonl", tuple(evaluated))})
    return str(out / variant)


def study_data_dir(spec: StudySpec) -> Optional[str]:
    """The data directory as the driver resolves it, made absolute for trials.

    Trials run in Ray's working directories, where the current directory differs from the driver's,
    so relative defaults (``../shared/datasets``) must be resolved here, once.
    """
    from recon.data_prep.datadir import existing_data_root

    root = existing_data_root(spec.resolve_path(spec.data.data_dir) if spec.data.data_dir else None)
    return str(root) if root else None


def run_pretrain_stage(spec: StudySpec, name: str, out_dir: Path, tracking_uri: str,
                       log: Callable[[str], None] = say) -> Path:
    """Run one pre-training stage through ``recon.orchestration.pretrain.run_pretraining`` -> checkpoint dir.

    The stage IS a ``PretrainConfig`` (validated with the spec); the run adds where it lives and is
    tracked: the study's store and experiment (the driver writes nothing meanwhile).
    """
    from recon.orchestration.pretrain import PretrainRun, run_pretraining

    stage = spec.pretrain[name]
    cfg = PretrainRun(**{**stage.to_dict(), "corpus": _corpus_dir(spec, stage, log), "out": str(out_dir),
                         "run_name": name, "tracking_uri": tracking_uri, "experiment": spec.name,
                         "evaluate_on": spec.evaluated_datasets(), "data_dir": study_data_dir(spec),
                         # An interrupted stage (driver killed) continues from its latest checkpoint.
                         "resume": (out_dir / name / "config.json").is_file()})
    return Path(run_pretraining(cfg))


def ensure_pretrained(spec: StudySpec, stages: Sequence[str], tracking_uri: str,
                      log: Callable[[str], None] = say) -> dict[str, str]:
    """Checkpoint dir per stage, running the stages whose output is not complete yet."""
    out: dict[str, str] = {}
    for name in stages:
        stage, stage_hash = spec.pretrain[name], spec.stage_hash(name)
        stage_dir = spec.resolved_output_dir() / "pretrain" / f"{name}-{stage_hash}"
        marker = stage_dir / STAGE_DONE
        if marker.is_file():
            out[name] = json.loads(marker.read_text())["checkpoint_dir"]
            log(f"pretrain {name}: reusing {out[name]}")
            continue
        log(f"pretrain {name}: {stage.objective}, {stage.steps} steps -> {stage_dir}")
        start = time.time()
        checkpoint = run_pretrain_stage(spec, name, stage_dir, tracking_uri, log)
        seconds = time.time() - start
        stage_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"checkpoint_dir": str(checkpoint), "stage_hash": stage_hash,
                                      "seconds": round(seconds, 1)}) + "\n")
        log(f"pretrain {name}: done in {seconds:.0f} s -> {checkpoint}")
        out[name] = str(checkpoint)
    return out


# ---------------------------------------------------------------- the driver

class Progress:
    """Compact progress lines: done / running / failed out of the pending trials, and an ETA."""

    def __init__(self, total: int, concurrency: int, log: Callable[[str], None]) -> None:
        self.total, self.concurrency, self.log = total, max(1, concurrency), log
        self.done = self.failed = self.running = 0
        self.durations: list[float] = []
        self.started: dict[str, float] = {}

    def start(self, key: str) -> None:
        self.started[key] = time.time()
        self.running += 1

    def finish(self, key: str, ok: bool) -> None:
        self.running = max(0, self.running - 1)
        if key in self.started:
            self.durations.append(time.time() - self.started.pop(key))
        if ok:
            self.done += 1
        else:
            self.failed += 1
        left = self.total - self.done - self.failed
        eta = (sum(self.durations) / len(self.durations)) * math.ceil(left / self.concurrency) if self.durations else 0
        self.log(f"[trials] done {self.done}/{self.total}, running {self.running}, failed {self.failed}, "
                 f"ETA {eta / 60:.1f} min")


def _driver_callback(by_id: dict[str, Trial], tracker: StudyTracker, trials_dir: Path, progress: Progress):
    """A Tune callback (built lazily: ray is imported only when a study runs)."""
    from ray.tune import Callback

    class DriverLogger(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            progress.start(trial.trial_id)

        def on_trial_complete(self, iteration, trials, trial, **info):
            tid = trial.config["trial"]["trial_id"]
            result_file = trials_dir / tid / RESULT_FILE
            ok = result_file.is_file()
            if ok:
                tracker.log_trial(by_id[tid], json.loads(result_file.read_text()), trials_dir / tid)
            progress.finish(trial.trial_id, ok)

        def on_trial_error(self, iteration, trials, trial, **info):
            progress.finish(trial.trial_id, False)

    return DriverLogger()


@dataclass
class StudyOutcome:
    trials: int
    skipped: int       # already finished in MLflow before this run
    harvested: int     # finished on disk, logged now without training
    ran: int
    failed: list[str]  # trial ids
    logged: int        # finished trials in MLflow now
    seconds: float
    unavailable: int = 0  # trials whose data is missing here (listed by `recon study plan`)


def stale_runs(trials: Sequence[Trial], runs: dict[str, Any]) -> int:
    """Finished runs whose labels (dataset, setting, format, model, seed) match a planned trial
    that is not finished: the same cell logged under an id the current config no longer gives."""
    planned = {t.trial_id for t in trials}
    todo = {(t.dataset, t.setting, t.format, t.model, str(t.seed)) for t in trials if t.trial_id not in runs}
    return sum(1 for tid, run in runs.items() if tid not in planned and
               tuple(run.data.tags.get(k) for k in ("dataset", "setting", "format", "model", "seed")) in todo)


def harvest(trials: Sequence[Trial], tracker: StudyTracker, trials_dir: Path, finished: set[str]) -> int:
    """Log trials that completed (``result.json`` present) but never reached MLflow."""
    count = 0
    for trial in trials:
        result_file = trials_dir / trial.trial_id / RESULT_FILE
        if trial.trial_id not in finished and result_file.is_file():
            if tracker.log_trial(trial, json.loads(result_file.read_text()), result_file.parent):
                count += 1
            finished.add(trial.trial_id)
    return count


def _init_ray(spec: StudySpec, address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS) or start a local Ray; True when we started it."""
    from .ray_session import ensure_ray

    return ensure_ray(address=address or spec.ray.address, num_cpus=num_cpus or spec.ray.num_cpus)


def run_study(spec: StudySpec, *, address: Optional[str] = None, num_cpus: Optional[int] = None,
              tracking_uri: Optional[str] = None, log: Callable[[str], None] = say) -> StudyOutcome:
    """Run every unfinished trial of ``spec`` on Ray Tune and log each to MLflow as it finishes."""
    start = time.time()
    out_dir = spec.resolved_output_dir()
    trials_dir = out_dir / "trials"
    trials = expand(spec)
    tracker = StudyTracker(tracking_uri or spec.resolved_tracking_uri(), spec.name, out_dir / "artifacts")
    tracker.study_run_id()
    runs = tracker.trial_runs()
    finished = set(runs)
    skipped = sum(t.trial_id in finished for t in trials)
    stale = stale_runs(trials, runs)
    if stale:
        log(f"study {spec.name}: {stale} finished run(s) in MLflow match a planned cell and seed but not its trial id "
            "(logged under another config, or by a recon before the configuration tree changed the ids): they are "
            "kept, not reused, and those trials run again")
    harvested = harvest(trials, tracker, trials_dir, finished)
    missing = unavailable_trials(spec, trials, study_data_dir(spec))
    pending = [t for t in trials if t.trial_id not in finished and t.trial_id not in missing]
    log(f"study {spec.name}: {len(trials)} trials, {skipped} already in MLflow, {harvested} logged from disk, "
        f"{len(missing)} cannot run here (no data; see `recon study plan`), {len(pending)} to run")
    failed: list[str] = []
    if pending:
        started_ray = _init_ray(spec, address, num_cpus)
        try:
            stages = sorted({spec.model(t.model).pretrain_ref for t in pending} - {None})
            checkpoints = ensure_pretrained(spec, stages, tracker.tracking_uri, log)
            failed = _tune(spec, pending, tracker, trials_dir, checkpoints, log)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    logged = len(tracker.finished_trial_ids() & {t.trial_id for t in trials})
    return StudyOutcome(trials=len(trials), skipped=skipped, harvested=harvested, ran=len(pending),
                        failed=failed, logged=logged, seconds=round(time.time() - start, 1),
                        unavailable=len(missing))


def _tune(spec: StudySpec, pending: Sequence[Trial], tracker: StudyTracker, trials_dir: Path,
          checkpoints: dict[str, str], log: Callable[[str], None]) -> list[str]:
    from ray import tune

    model_checkpoints = {f"{CHECKPOINT_PREFIX}{stage}": path for stage, path in checkpoints.items()}
    base_dir = spec.source.parent if spec.source else Path.cwd()
    param_space = {
        "trial": tune.grid_search([t.to_dict() for t in pending]),
        "trials_dir": str(trials_dir), "checkpoints": model_checkpoints, "base_dir": str(base_dir),
        "data_dir": study_data_dir(spec),
        "trainer": spec.trainer, "threads": max(1, int(spec.ray.cpus_per_trial)),
    }
    resources = {"cpu": spec.ray.cpus_per_trial, "gpu": spec.ray.gpus_per_trial}
    progress = Progress(len(pending), spec.ray.max_concurrent_trials, say if log is print else log)
    by_id = {t.trial_id: t for t in pending}

    def name_of(trial) -> str:
        return trial.config["trial"]["trial_id"]

    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.ray.max_concurrent_trials,
                                    trial_name_creator=name_of, trial_dirname_creator=name_of),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(spec.resolved_output_dir() / "tune"),
            failure_config=tune.FailureConfig(max_failures=spec.ray.max_retries),
            callbacks=[_driver_callback(by_id, tracker, trials_dir, progress)],
            verbose=0,
        ),
    )
    grid = tuner.fit()
    failed = []
    for result in grid:
        tid = result.config["trial"]["trial_id"] if result.config else None
        if result.error is not None or tid is None or not (trials_dir / tid / RESULT_FILE).is_file():
            failed.append(tid or "?")
            log(f"trial {tid} failed: {str(result.error).splitlines()[0] if result.error else 'no result'}")
    return failed
