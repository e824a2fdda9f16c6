"""What the study driver shows and hears while Tune runs the grid: compact progress lines (done / running /
failed / not yet in MLflow, an ETA) and the Tune callback that hands each completed trial to the MLflow writer
thread (:mod:`recon.orchestration.study.writer`). Writers are registered by study name here, so the callback
Tune pickles never carries the writer's thread and locks."""
from __future__ import annotations

import math
import time
from typing import Any, Callable


class Progress:
    """Compact progress lines: done / running / failed out of the pending trials, and an ETA.

    ``running`` is the set of trials Tune has started and not yet completed, errored or put back for
    a retry (a set: a retried trial starts again under the same key). A completed trial counts as
    done when its result is in storage, whether or not the writer has logged it to MLflow yet.
    """

    def __init__(self, total: int, concurrency: int, log: Callable[[str], None],
                 unlogged: Callable[[], int] = lambda: 0) -> None:
        self.total, self.concurrency, self.log, self.unlogged = total, max(1, concurrency), log, unlogged
        self.done = self.failed = 0
        self.durations: list[float] = []
        self.started: dict[str, float] = {}

    @property
    def running(self) -> int:
        return len(self.started)

    def start(self, key: str) -> None:
        self.started[key] = time.time()

    def stop(self, key: str) -> None:
        """The trial's process finished (or is retried): it no longer runs; its time counts for the ETA."""
        if key in self.started:
            self.durations.append(time.time() - self.started.pop(key))

    def finish(self, key: str, ok: bool) -> None:
        self.stop(key)
        if ok:
            self.done += 1
        else:
            self.failed += 1
        left = self.total - self.done - self.failed
        eta = (sum(self.durations) / len(self.durations)) * math.ceil(left / self.concurrency) if self.durations else 0
        waiting = self.unlogged()
        self.log(f"[trials] done {self.done}/{self.total}, running {self.running}, failed {self.failed}"
                 + (f", not yet in MLflow {waiting} (server down)" if waiting else "") + f", ETA {eta / 60:.1f} min")


_WRITERS: dict[str, Any] = {}  # the driver's MLflow writer, by study (not part of the pickled Tune callback)


CLOSE_WAIT_S = 30.0  # at the end, how long to keep asking a tracking server that does not answer


def _submit(study: str, trial_id: str) -> None:
    """Hand a completed trial to the study's writer (module level: Tune pickles its callbacks, and a function
    referenced by name does not drag the writer's thread and locks along)."""
    _WRITERS[study].submit(trial_id)


def _waiting(study: str) -> int:
    writer = _WRITERS.get(study)
    return writer.waiting() if writer is not None else 0


def _driver_callback(study: str, progress: Progress):
    """A Tune callback (built lazily: ray is imported only when a study runs): a completed trial is done
    (its result is in storage) and goes to the writer thread, so Tune hands its worker the next trial at once."""
    from ray.tune import Callback

    class DriverLogger(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            progress.start(trial.trial_id)

        def on_trial_complete(self, iteration, trials, trial, **info):
            _submit(study, trial.config["trial"]["trial_id"])
            progress.finish(trial.trial_id, True)

        def on_trial_recover(self, iteration, trials, trial, **info):
            progress.stop(trial.trial_id)  # Tune starts it again (on_trial_start) for the retry

        def on_trial_error(self, iteration, trials, trial, **info):
            # Called once the trial's retries are used up; _tune records the error from Tune's result.
            progress.finish(trial.trial_id, False)

    return DriverLogger()


__all__ = ['Progress', '_WRITERS', 'CLOSE_WAIT_S', '_submit', '_waiting', '_driver_callback']
