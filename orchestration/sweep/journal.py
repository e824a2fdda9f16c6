"""A sweep's Optuna study, kept as a journal file in the sweep's storage: where that is, opening the study, its
sampler, and settling the trials a killed driver left RUNNING (``recon sweep resume``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from recon.core.storage import Storage, resolve_storage
from recon.orchestration.sweep.spec import SweepSpec
from recon.orchestration.sweep.trial import RESULT_FILE, sweep_rel, trial_rel


JOURNAL = "optuna.journal"


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


def sweep_storage(spec: SweepSpec, override: Optional[str] = None) -> Storage:
    """``--storage``, the spec's ``storage``, ``$RECON_STORAGE``, else the sweep's output folder."""
    value = override or (str(spec.resolve_path(spec.storage)) if spec.storage and "://" not in spec.storage
                         else spec.storage)
    return Storage.from_uri(resolve_storage(value, spec.resolved_output_dir()))


__all__ = ['sweep_storage', 'JOURNAL', 'Journal', 'open_study', 'make_sampler', 'settle']
