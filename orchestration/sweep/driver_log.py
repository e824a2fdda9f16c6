"""The sweep driver's MLflow side: the Tune callback that logs each finished trial, and the harvest of trials a
killed driver never logged.

The driver alone writes to MLflow. When the tracking server does not answer, finished trials wait in
:class:`_GatedLog` (their records are in storage) and are logged, in order, once it answers again; at the end
the sweep waits ``CLOSE_WAIT_S`` for it, then says what is left and that ``recon sweep resume`` logs it.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from recon.core.storage import Storage
from recon.orchestration.pretrain.checkpoints import complete_checkpoints
from recon.orchestration.sweep.records import record_of
from recon.orchestration.sweep.spec import SweepSpec, show_value
from recon.orchestration.sweep.tracker import SweepTracker
from recon.orchestration.sweep.trial import METRIC, PRETRAIN_RUN, trial_rel
from recon.orchestration.tracking.health import TrackingGate


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
        return ", ".join(f"{p.split('.')[-1]}={show_value(trial.config.get(p))}" for p in spec.domains)

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




__all__ = ['harvest', 'CLOSE_WAIT_S', '_GatedLog', '_driver_callback']
