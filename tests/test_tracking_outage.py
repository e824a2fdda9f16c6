"""A tracking-server outage costs nothing: a real ``mlflow server`` on 127.0.0.1 is killed in the middle of a study.

* restarted while trials still run: the study finishes in about the time it takes without the outage, and every
  trial is in MLflow exactly once;
* never restarted: the study finishes its trials, exits 1 naming the server and the command that logs the rest,
  and its tables are built from storage;
* Ctrl-C during the outage stops the driver within seconds, and a later ``resume`` logs everything.

Plus the tables' and the findings' mark for a cell whose median is over fewer seeds than planned.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "studies"

SLOW_WRAPPER = """

import time as _time

_toy_train = train


def train(request, callbacks):
    _time.sleep(15.0)  # the grid lasts long enough for the server to be killed and restarted while trials run
    return _toy_train(request, callbacks)
"""


class MlflowServer:
    """``mlflow server`` with an SQLite store in ``root``; start / kill / start again on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> float:
        begin = time.monotonic()
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"], stdout=log, stderr=log, start_new_session=True)
        while time.monotonic() - begin < timeout:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return time.monotonic() - begin
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def trial_runs(self, study: str) -> dict[str, list[str]]:
        """trial id -> statuses of its runs in ``study``'s experiment, read from the server's database.

        Per experiment, because two studies with the same grid share trial ids (an id names what is trained, not
        which study asked for it)."""
        db = sqlite3.connect(self.root / "mlflow.db")
        rows = db.execute("select t.value, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                          "join experiments e on e.experiment_id = r.experiment_id "
                          "where t.key = 'trial_id' and r.lifecycle_stage = 'active' and e.name = ?",
                          (study,)).fetchall()
        out: dict[str, list[str]] = {}
        for tid, status in rows:
            out.setdefault(tid, []).append(status)
        return out


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path / "mlflow")
    srv.root.mkdir()
    srv.start()
    yield srv
    srv.kill()


def _study(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    # the trainer travels to the workers as one file's source: the toy trainer with a pause before each trial
    (folder / "slow_trainer.py").write_text((FIXTURES / "toy_trainer.py").read_text() + SLOW_WRAPPER)
    text = (FIXTURES / "toy_study.yaml").read_text().replace("name: toy", f"name: {name}")
    text = text.replace("formats: [C+M]", "formats: [C+M, OnlyC]").replace("seeds: [42, 43]", "seeds: [42, 43, 44]")
    text = text.replace("trainer: toy_trainer.py:train", "trainer: slow_trainer.py:train")
    path = folder / "study.yaml"
    path.write_text(text + f"output_dir: {folder / 'out'}\n")
    return path


def _recon(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "recon.orchestration.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True)


def _results(path: Path) -> int:
    return len(list((path.parent / "out" / "results").glob("*/result.json")))


def _when(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_outage_mid_study_costs_nothing(tmp_path, server):
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec

    # without an outage
    calm = _study(tmp_path, "calm")
    begin = time.monotonic()
    proc = _recon("study", "run", str(calm), "--tracking-uri", server.url)
    out, _ = proc.communicate(timeout=900)
    calm_s = time.monotonic() - begin
    assert proc.returncode == 0, out
    # the same study with the server killed after the first result and started again at once (it takes the
    # server tens of seconds to answer again, while the trials go on)
    stormy = _study(tmp_path, "stormy")
    restart: dict[str, float] = {}

    def outage() -> None:
        _when(lambda: _results(stormy) >= 1, 600)
        server.kill()
        time.sleep(2.0)
        restart["s"] = server.start()

    chaos = threading.Thread(target=outage, daemon=True)
    chaos.start()
    begin = time.monotonic()
    proc = _recon("study", "run", str(stormy), "--tracking-uri", server.url)
    out, _ = proc.communicate(timeout=900)
    stormy_s = time.monotonic() - begin
    chaos.join(timeout=300)
    print(f"without outage {calm_s:.1f} s; with outage {stormy_s:.1f} s (server restart took {restart['s']:.1f} s)")
    assert proc.returncode == 0, out
    assert f"MLflow tracking server {server.url} does not answer" in out and "answers again" in out
    assert out.count("does not answer") == 1  # said once, not per trial
    assert "failed 0" in out and "6 run now, 0 failed; 6 in MLflow" in out
    # no stall: the trials never wait for MLflow; what the outage adds is the backlog logged after the restart
    assert stormy_s < 1.5 * calm_s + 30
    trials = expand(load_spec(stormy))
    runs = server.trial_runs("stormy")
    assert {t.trial_id: runs.get(t.trial_id) for t in trials} == {t.trial_id: ["FINISHED"] for t in trials}
    cells = pd.read_csv(stormy.parent / "out" / "summary" / "cells.csv")
    assert (cells["n"] == 3).all() and (cells["planned"] == 3).all()


@pytest.mark.slow
def test_server_that_never_comes_back(tmp_path, server):
    path = _study(tmp_path, "lost")
    killer = threading.Thread(target=lambda: (_when(lambda: _results(path) >= 1, 600), server.kill()), daemon=True)
    killer.start()
    proc = _recon("study", "run", str(path), "--tracking-uri", server.url)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 1, out
    assert "[trials] done 6/6, running 0, failed 0" in out
    assert f"not in MLflow: the tracking server {server.url} did not answer" in out
    assert f"`recon study resume {path}` logs them" in out
    summary = path.parent / "out" / "summary"
    cells = pd.read_csv(summary / "cells.csv")
    assert (cells["n"] == 3).all()  # built from storage: every finished trial counts
    assert "built from storage" in (summary / "notes.json").read_text()
    # once the server is back, resume logs the rest without training anything
    server.start()
    proc = _recon("study", "resume", str(path), "--tracking-uri", server.url)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "0 to run" in out
    assert sorted(len(v) for v in server.trial_runs("lost").values()) == [1] * 6


@pytest.mark.slow
def test_ctrl_c_during_an_outage_stops_within_seconds(tmp_path, server):
    path = _study(tmp_path, "interrupted")
    proc = _recon("study", "run", str(path), "--tracking-uri", server.url)
    _when(lambda: _results(path) >= 1, 600)
    server.kill()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    assert _when(lambda: any("does not answer" in line for line in lines), 300), "".join(lines)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    stopped_s = time.monotonic() - sent
    assert stopped_s < 20, f"{stopped_s:.1f} s"
    server.start()
    proc = _recon("study", "resume", str(path), "--tracking-uri", server.url)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert sorted(len(v) for v in server.trial_runs("interrupted").values()) == [1] * 6


def test_cells_over_fewer_seeds_are_marked(tmp_path):
    from recon.orchestration.report.findings import findings_paragraph
    from recon.orchestration.report.tables import SEED_NOTE, write_all

    stats = pd.DataFrame([
        {"table": "table5", "dataset": "semeval", "setting": "10%", "format": f, "model": "MiniLM", "metric":
         "micro_f1", "n": n, "median": m, "min": m - 0.01, "max": m + 0.01, "q1": m, "q3": m, "iqr": 0.0,
         "planned": 3} for f, n, m in (("C+M", 3, 0.70), ("OnlyC", 2, 0.65), ("OnlyM", 3, 0.40))])
    write_all(stats, {"MiniLM": "BERT"}, tmp_path)
    table = (tmp_path / "table5.md").read_text()
    assert "65.0 [2/3 seeds]" in table and "70.0 [" not in table and SEED_NOTE in table
    stats.to_csv(tmp_path / "cells.csv", index=False)
    assert "provisional: SemEval 10% OnlyC MiniLM (2/3)" in findings_paragraph(tmp_path, {"MiniLM": "BERT"})


def test_pretraining_metrics_wait_out_an_outage():
    """The pre-training driver's metric thread keeps metrics back while the server is down, and logs each once."""
    from mlflow.entities import Metric

    from recon.orchestration.pretrain.progress import ProgressPoller
    from recon.orchestration.tracking.health import TrackingGate

    state = {"up": False, "logged": []}

    class Client:
        def log_batch(self, run_id, metrics):
            if not state["up"]:
                raise ConnectionError("connection refused")
            state["logged"].extend(metrics)

    said: list[str] = []
    poller = ProgressPoller.__new__(ProgressPoller)
    poller.client, poller.run_id, poller.name, poller.log = Client(), "r", "cp", said.append
    poller.gate = TrackingGate("http://127.0.0.1:9", said.append, first_wait_s=0.0,
                               probe=lambda uri: None if state["up"] else "refused")
    poller.unlogged = [Metric("loss", 1.0, 0, 1), Metric("loss", 0.9, 0, 2)]
    poller.flush()
    assert len(poller.unlogged) == 2 and state["logged"] == [] and not poller.gate.up
    poller.unlogged.append(Metric("loss", 0.8, 0, 3))
    poller.flush()  # still down: kept, said once
    assert sum("does not answer" in line for line in said) == 1
    state["up"] = True
    poller.flush()
    assert [m.step for m in state["logged"]] == [1, 2, 3] and poller.unlogged == []
    assert any("answers again" in line for line in said)


def test_writer_keeps_trials_back_during_an_outage_and_logs_each_once(monkeypatch):
    """The driver's writer thread, with a server that goes down after the first trial and comes back."""
    import recon.orchestration.study.writer as writer_mod

    state = {"up": True, "logged": []}

    class Tracker:
        tracking_uri = "http://127.0.0.1:9"

    def log_trial(tracker, trial, storage):
        if not state["up"]:
            raise ConnectionError("connection refused")
        state["logged"].append(trial)
        return True

    said: list[str] = []
    w = writer_mod.TrialWriter(Tracker(), None, {t: t for t in "abcd"}, said.append, log_trial)
    w.gate.probe = lambda uri: None if state["up"] else "refused"
    w.gate.first_wait_s = 0.2
    w.submit("a")
    assert _when(lambda: state["logged"] == ["a"], 10)
    state["up"] = False
    for tid in "bcd":
        w.submit(tid)
    assert _when(lambda: w.waiting() == 3, 10)
    assert sum("does not answer" in line for line in said) == 1
    state["up"] = True
    assert w.close(wait_s=20) == []
    assert state["logged"] == ["a", "b", "c", "d"] and any("answers again" in line for line in said)


def test_writer_gives_up_after_its_wait_and_names_what_is_left(monkeypatch):
    import recon.orchestration.study.writer as writer_mod

    class Tracker:
        tracking_uri = "http://127.0.0.1:9"

    def log_trial(tracker, trial, storage):
        raise ConnectionError("connection refused")

    w = writer_mod.TrialWriter(Tracker(), None, {"a": "a", "b": "b"}, lambda line: None, log_trial)
    w.gate.probe = lambda uri: "refused"
    w.submit("a")
    w.submit("b")
    begin = time.monotonic()
    assert w.close(wait_s=2) == ["a", "b"]
    assert time.monotonic() - begin < 10


def test_sweep_log_waits_out_an_outage():
    """The sweep driver's MLflow logging: finished trials wait while the server is down and are logged in order."""
    from recon.orchestration.sweep.driver_log import _GatedLog

    state = {"up": True, "logged": []}

    class Tracker:
        tracking_uri = "http://127.0.0.1:9"

        def log_trial(self, number, params, status, record):
            if not state["up"]:
                raise ConnectionError("connection refused")
            state["logged"].append(number)

    said: list[str] = []
    gated = _GatedLog(Tracker(), said.append)
    gated.gate.probe = lambda uri: None if state["up"] else "refused"
    gated.gate.first_wait_s = 0.0
    gated.log_trial(0, {}, "completed", {})
    state["up"] = False
    gated.log_trial(1, {}, "completed", {})
    gated.log_trial(2, {}, "stopped_early", {})
    assert state["logged"] == [0] and len(gated.pending) == 2
    assert not gated.close(wait_s=0)  # still down: the caller names what is left
    state["up"] = True
    assert gated.close(wait_s=5) and state["logged"] == [0, 1, 2]
    assert sum("does not answer" in line for line in said) == 1
