"""The metric path of a pre-training run: rank 0's per-step files in storage -> MLflow and ``progress.jsonl``.

The driver creates the run's MLflow run (params redacted like every other writer's) and a thread
polls the step files into it; workers never open the tracking store.
"""
from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from recon.core.privacy import redact
from recon.core.storage import Storage
from recon.orchestration.tracking.health import TrackingGate
from recon.orchestration.pretrain.run import MLFLOW_FILE, PROGRESS_DIR, PROGRESS_FILE, PretrainRun

def mlflow_run(cfg: PretrainRun, run: Storage) -> str:
    """Create the run (params = config) or reopen the one recorded in ``mlflow_run.json``."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    if cfg.resume and run.exists(MLFLOW_FILE):
        run_id = run.read_json(MLFLOW_FILE)["run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    experiment = client.get_experiment_by_name(cfg.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.experiment)
    created = client.create_run(experiment_id, run_name=cfg.name, tags={"recon.kind": "pretrain",
                                                                       "recon.objective": cfg.objective})
    params = {k: redact("" if v is None else str(v))[:500] for k, v in cfg.to_dict().items() if not k.startswith("fail_")}
    params["accum_steps"] = str(cfg.accum_steps)
    client.log_batch(created.info.run_id, params=[Param(k, v) for k, v in params.items()])
    run.write_json(MLFLOW_FILE, {"run_id": created.info.run_id, "tracking_uri": cfg.tracking_uri})
    return created.info.run_id


class ProgressPoller:
    """Driver side of the metric path: rank 0's per-step files in storage -> MLflow and ``progress.jsonl``.

    Rank 0 writes each logged step as its own small file under ``progress/<attempt>/`` (``attempt``
    sorts by start time), so nothing is lost when a worker group dies between two controller
    polls; a driver thread picks new files up every few seconds. Each step is logged to MLflow once
    (a step redone after a restart is already there), while ``progress.jsonl`` keeps every row in
    attempt order, so a reader can see what each attempt did.
    """

    def __init__(self, cfg: PretrainRun, run: Storage, run_id: str, every_s: float = 3.0,
                 log: Optional[Callable[[str], None]] = None) -> None:
        from mlflow.tracking import MlflowClient

        self.client, self.run_id, self.run, self.every_s = MlflowClient(cfg.tracking_uri), run_id, run, every_s
        self.log, self.name, self.steps, self.objective = log, cfg.name, int(cfg.steps), cfg.objective
        self._said = 0  # the last step shown on the console
        self.seen: set[str] = set()
        self.rows: dict[str, dict] = {}
        self.logged: set[int] = {m.step for m in self.client.get_metric_history(run_id, "loss")}
        self.gate = TrackingGate(cfg.tracking_uri, log or print)
        self.unlogged: list = []  # metrics kept back while the tracking server does not answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="recon-pretrain-progress", daemon=True)

    def start(self) -> "ProgressPoller":
        self._thread.start()
        return self

    def poll(self) -> None:
        from mlflow.entities import Metric

        files = sorted(f for f in (self.run.list(PROGRESS_DIR) if self.run.exists(PROGRESS_DIR) else [])
                       if f.endswith(".json") and f not in self.seen)
        batch = []
        now = int(time.time() * 1000)
        for rel in files:
            row = self.run.read_json(rel)
            self.seen.add(rel)
            self.rows[rel] = row
            step = int(row["step"])
            if step in self.logged:
                continue
            self.logged.add(step)
            batch += [Metric(k, float(v), now, step) for k, v in row.items()
                      if k not in ("step", "resumed_from") and isinstance(v, (int, float)) and math.isfinite(float(v))]
        self.unlogged += batch
        self.flush()
        if self.log and files:
            self._say(self.rows[files[-1]])

    def flush(self, force: bool = False) -> None:
        """Log the metrics kept back; while the server does not answer, only when it is time to ask again (or
        ``force``). Training never waits for MLflow: every step is in storage (``progress/``) either way."""
        if not self.gate.up and not ((force or self.gate.due()) and self.gate.try_again()):
            return
        while self.unlogged:
            try:
                self.client.log_batch(self.run_id, metrics=self.unlogged[:1000])
            except Exception as exc:  # noqa: BLE001 - an outage is survived; another error drops the batch, said
                if self.gate.is_outage(exc):
                    return
                (self.log or print)(f"[pretrain {self.name}] metrics could not be logged to MLflow ({exc}); they "
                                    "are in the run's progress.jsonl")
            del self.unlogged[:1000]

    def _say(self, row: dict) -> None:
        """A console line about every tenth of the run: step, loss, training and held-out accuracy."""
        step = int(row["step"])
        if step - self._said < max(1, self.steps // 10) and step != self.steps:
            return
        self._said = step
        heldout = ""
        if "heldout_contrastive_accuracy" in row:
            heldout = (f", held-out accuracy {row['heldout_contrastive_accuracy']:.3f} "
                       f"(chance {row.get('heldout_chance_accuracy', float('nan')):.3f})")
        self.log(f"[pretrain {self.name}] step {step}/{self.steps}: loss {row.get('loss', float('nan')):.3f}, "
                 f"{self.objective} accuracy {row.get('contrastive_accuracy', float('nan')):.3f}{heldout}")

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def stop(self, wait_s: float = 30.0) -> None:
        """Stop the thread, take the last files, and write ``progress.jsonl`` (attempt order); metrics kept back
        by an outage get ``wait_s`` more for the server to answer (asked every few seconds)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        self.poll()
        end = time.monotonic() + wait_s
        while self.unlogged and time.monotonic() < end:
            time.sleep(3.0)
            self.flush(force=True)
        self.run.write_text(PROGRESS_FILE, "".join(json.dumps(self.rows[k]) + "\n" for k in sorted(self.rows)))


def read_progress_rows(run: Storage) -> list[dict]:
    """Every row of ``progress.jsonl`` in arrival order (a redone step appears once per attempt)."""
    if not run.exists(PROGRESS_FILE):
        return []
    return [json.loads(line) for line in run.read_text(PROGRESS_FILE).splitlines() if line.strip()]


def read_progress(run_uri: str | Path) -> list[dict]:
    """One row per step, the last attempt winning for steps that were redone after a restart."""
    rows: dict[int, dict] = {}
    for row in read_progress_rows(Storage.from_uri(str(run_uri))):
        rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


__all__ = ["mlflow_run", "ProgressPoller", "read_progress", "read_progress_rows"]
