"""Tracking is never on the critical path: whether the store answers, asked cheaply, and MLflow calls that fail
in seconds rather than minutes.

MLflow's HTTP client retries a failed call 7 times with a doubling back-off (about 4 minutes per call) and waits
up to 120 s for each answer. A driver that logs trial after trial would then stall for hours during an outage.
:func:`fail_fast_http` gives recon's processes a short schedule (a user's own settings win); :func:`answers`
asks a tracking server's ``/health`` with a timeout of a few seconds; :class:`TrackingGate` remembers that the
server is down, says so once, and tells the writer when to ask again (exponential back-off, capped).
"""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from typing import Callable, Optional

from recon.core.preflight import Preflight
from recon.orchestration.tracking.uri import is_remote, sqlite_path

FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
PROBE_TIMEOUT_S = 3.0


def fail_fast_http() -> None:
    """A failing MLflow HTTP call gives up after one retry and 15 s (``setdefault``: the user's values win)."""
    for key, value in FAST_HTTP.items():
        os.environ.setdefault(key, value)


def answers(uri: str, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when the tracking store at ``uri`` answers (a local store always does), else why not."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read(64)
        return None
    except urllib.error.HTTPError:  # the server answered, if not with 200: it is up
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason


class TrackingGate:
    """Up or down, as the writer last found the server; while down, when to ask again (5 s, doubling to 60 s)."""

    def __init__(self, uri: str, log: Callable[[str], None], first_wait_s: float = 5.0, max_wait_s: float = 60.0,
                 probe: Callable[[str], Optional[str]] = answers) -> None:
        self.uri, self.log, self.probe = uri, log, probe
        self.first_wait_s, self.max_wait_s = first_wait_s, max_wait_s
        self.down_since: Optional[float] = None
        self._wait_s = first_wait_s
        self._next_probe = 0.0

    @property
    def up(self) -> bool:
        return self.down_since is None

    def is_outage(self, error: BaseException) -> bool:
        """After a failed call: True (and the gate goes down, said once) when the server does not answer; False
        when it does (the call failed for its own reason)."""
        if not is_remote(self.uri):
            return False
        reason = self.probe(self.uri)
        if reason is None:
            return False
        if self.up:
            self.down_since = time.monotonic()
            self._wait_s = self.first_wait_s
            self._next_probe = self.down_since + self._wait_s
            self.log(f"MLflow tracking server {self.uri} does not answer ({reason}): trials keep running and keep "
                     "their results in storage; they are logged when it answers again")
        return True

    def due(self) -> bool:
        return not self.up and time.monotonic() >= self._next_probe

    def try_again(self) -> bool:
        """Ask the server now; True (gate up, said once) when it answers, else the next ask is later."""
        if self.probe(self.uri) is None:
            down_for = time.monotonic() - (self.down_since or time.monotonic())
            self.down_since = None
            self.log(f"MLflow tracking server {self.uri} answers again (down {down_for:.0f} s): logging the trials "
                     "that finished meanwhile")
            return True
        self._wait_s = min(self._wait_s * 2, self.max_wait_s)
        self._next_probe = time.monotonic() + self._wait_s
        return False


def tracking_problems(pf: Preflight, kind: str, tracking_uri: str) -> None:
    """The tracking store of a study, sweep or pre-training run (``kind``), checked into ``pf``: an SQLite
    store's folder writable, a server answering."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        pf.new_file(db, "the tracking store", "give --tracking-uri a store you can write")
    silent = answers(tracking_uri)
    if silent is not None:
        pf.add(f"the MLflow tracking server {tracking_uri} does not answer ({silent})",
               f"start it, or give --tracking-uri a store that answers (an outage after the {kind} starts costs "
               "nothing: its results wait and are logged when it is back)")


__all__ = ["tracking_problems", "fail_fast_http", "answers", "TrackingGate", "FAST_HTTP", "PROBE_TIMEOUT_S"]
