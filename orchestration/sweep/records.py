"""What a sweep holds: each trial's record read from storage, and the best completed trial with its
distinguishability report (``recon sweep best`` and the end of ``recon sweep run``)."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from recon.core.errors import ReconError
from recon.core.storage import Storage
from recon.orchestration.sweep.journal import Journal, open_study, sweep_storage
from recon.orchestration.sweep.spec import SweepSpec, best_snippet, show_value
from recon.orchestration.sweep.tracker import trial_record


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
    return ", ".join(f"{p.split('.')[-1]}={show_value(params.get(p))}" for p in spec.domains)


def load_best(spec: SweepSpec, storage: Optional[str] = None) -> Optional[dict]:
    """The best completed trial of a sweep that has run (from its Optuna study in storage), with the
    distinguishability report read from the probes' predictions in storage."""
    journal = Journal(spec, sweep_storage(spec, storage))
    if not journal.exists():
        raise ReconError(f"sweep {spec.name!r} has not been started (no {journal.path}): use `recon sweep run`")
    study = open_study(spec, journal, create=False)
    records = all_records(spec, study, sweep_storage(spec, storage), functools.cache(spec.corpus_identity))
    return best_trial(spec, study, records)




__all__ = ['record_of', 'all_records', 'STATES', 'best_trial', '_label', 'load_best']
