"""The study driver's one MLflow writer: completed trials are logged from storage on a thread of their own.

Tune's event loop hands a worker its next trial at once; the writer logs the finished one behind it (one
thread keeps the driver the store's only writer). When the tracking server stops answering, the writer
notices once (MLflow's HTTP calls fail fast, :mod:`recon.orchestration.tracking.health`), says so once,
keeps the trials that finish meanwhile waiting, asks the server again with back-off and logs them all when it
answers. Training never waits for it: a trial is *done* when its result is in storage, whether or not it is
in MLflow yet. The thread is a daemon, so Ctrl-C ends the driver at once; whatever was not logged is in
storage, and the next ``recon study run|resume`` logs it ("harvest").
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Optional

from recon.core.storage import Storage
from recon.orchestration.study.tracker import StudyTracker
from recon.orchestration.study.trial import Trial
from recon.orchestration.tracking.health import TrackingGate

_CLOSE = object()
CLOSING_PROBE_S = 5.0


class TrialWriter:
    """Log completed trials (by id) from storage to MLflow, behind the trials, surviving an outage."""

    def __init__(self, tracker: StudyTracker, storage: Storage, by_id: dict[str, Trial],
                 log: Callable[[str], None], log_trial: Callable[[StudyTracker, Trial, Storage], bool]) -> None:
        self.tracker, self.storage, self.by_id, self.log, self._log_trial = tracker, storage, by_id, log, log_trial
        self.gate = TrackingGate(tracker.tracking_uri, log)
        self.logged: list[str] = []
        self.errors: dict[str, str] = {}        # trial id -> why MLflow refused it (not an outage)
        self._waiting: list[str] = []          # finished, not logged yet (the server is down or not reached yet)
        self._queue: "queue.Queue[object]" = queue.Queue()
        self._deadline: Optional[float] = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="recon-mlflow", daemon=True)
        self._thread.start()

    def submit(self, trial_id: str) -> None:
        self._queue.put(trial_id)

    def waiting(self) -> int:
        """Trials finished but kept from MLflow by an outage (0 while the server answers)."""
        with self._lock:
            return 0 if self.gate.up else len(self._waiting)

    def abandon(self) -> None:
        """Stop without waiting (the driver is interrupted): the daemon thread ends with the process."""
        self._deadline = time.monotonic()
        self._queue.put(_CLOSE)

    def close(self, wait_s: float) -> list[str]:
        """Log what is queued; while the server is down, keep asking for up to ``wait_s``; return the trial ids
        that are still not in MLflow (their results are in storage)."""
        self._deadline = time.monotonic() + wait_s
        self._queue.put(_CLOSE)
        while self._thread.is_alive():  # a short join at a time: Ctrl-C stays immediate
            self._thread.join(timeout=0.5)
        return list(self._waiting) + list(self.errors)

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        closing, last_probe = False, 0.0
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                item = None
            if item is _CLOSE:
                closing = True
            elif item is not None:
                with self._lock:
                    self._waiting.append(str(item))
            if not self.gate.up:
                if self.gate.due() or (closing and time.monotonic() - last_probe >= CLOSING_PROBE_S):
                    last_probe = time.monotonic()
                    self.gate.try_again()
            if self.gate.up:
                self._drain()
            if closing and (not self._waiting or time.monotonic() >= (self._deadline or 0)):
                return

    def _drain(self) -> None:
        while self._waiting and self.gate.up:
            tid = self._waiting[0]
            try:
                ok = self._log_trial(self.tracker, self.by_id[tid], self.storage)
            except Exception as exc:  # noqa: BLE001 - one trial's failure must not stop the writer
                if self.gate.is_outage(exc):
                    return  # stays first in line for when the server answers
                self.errors[tid] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                self.log(f"trial {tid}: could not be logged to MLflow ({self.errors[tid]}); it is in storage, and "
                         "`recon study resume` logs it")
                ok = None
            with self._lock:
                self._waiting.pop(0)
            if ok:
                self.logged.append(tid)


__all__ = ["TrialWriter", "CLOSING_PROBE_S"]
