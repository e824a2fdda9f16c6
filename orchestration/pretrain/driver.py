"""CP/MTB pre-training on Ray Train: the driver (config, storage, MLflow, the final encoder).

    cfg = PretrainRun(objective="cp", corpus="runs/corpus", num_workers=2, steps=200, batch_size=64)
    final = run_pretraining(cfg)       # final.local: a recon checkpoint for `recon finetune --model`

One optimizer step = ``num_workers x micro_batch_size x accum`` pairs (= ``batch_size``, the paper's
"batch size N": N positive pairs, 2N sentences). The worker loop is ``recon.orchestration.pretrain.worker``
(the Ray-free steps of ``recon.models.pretrain.steps.run_steps`` plus a few Ray lines); checkpoint
discovery is ``recon.orchestration.pretrain.checkpoints``.

Everything lives in the run's storage folder ``<out>/<run name>/`` (a path or a URI, see
``recon.core.storage``), never on a node's own disk: Ray's ``checkpoint_step_NNNNNN/``
folders, ``config.json`` (what the run was started with), ``mlflow_run.json`` (the MLflow run to
continue on resume), ``progress.jsonl`` (one line per logged step, written by the driver) and
``final.json`` (where the final encoder was published, content-addressed). The corpus and a local
starting encoder are published there too, so worker nodes fetch them instead of reading the
driver's paths.

MLflow: the driver creates the run and is its only writer. Rank 0 writes each logged step's
(all-reduced) metrics as a small file in the run's storage; a driver thread polls them into MLflow
(each step once) and writes ``progress.jsonl`` (see :class:`ProgressPoller`).

Fault tolerance: a dead worker makes Ray Train restart the worker group (``max_failures`` times);
every worker then starts from the newest complete checkpoint in storage, with the saved sampler
position. Re-running with ``resume=True`` and the same ``out``/``run_name`` does the same. MLM masks
and dropout are seeded per (seed, step, rank), so a resumed run repeats the uninterrupted run's
batches exactly.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from recon.core.config import knob
from recon.core.errors import ReconError
from recon.data_prep.registry import fewshot_datasets, supervised_datasets
from recon.models.pretrain.config import PretrainConfig

from recon.orchestration.pretrain.checkpoints import TRAIN_STATE_DIR, latest_checkpoint, step_of
from recon.core.storage import Storage, fetch_dir, is_uri, publish_dir, resolve_storage
from recon.orchestration.tracking.uri import DEFAULT_TRACKING_URI, absolute_tracking_uri

PROGRESS_FILE = "progress.jsonl"
CONFIG_FILE = "config.json"
MLFLOW_FILE = "mlflow_run.json"
FINAL_FILE = "final.json"
HELDOUT_START_FILE = "heldout_start.json"  # held-out figures of the untrained encoder (rank 0, fresh runs)
HELDOUT_KEYS = ("heldout_contrastive_accuracy", "heldout_chance_accuracy", "heldout_items")
EXPERIMENT = "recon-pretrain"
# Fields that may change when a run is resumed; every other field must match the original run (a
# changed ``steps`` would rebuild the LR schedule with a new total, so the rate would jump).
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "max_failures", "tracking_uri", "resume", "evaluate_on", "data_dir",
                               "allow_leakage", "heldout_batches", "worker_resources", "address", "fail_at_step", "fail_marker", "log_every", "use_gpu",
                               "cpus_per_worker", "corpus"})


@dataclass
class PretrainRun(PretrainConfig):
    """A pre-training run: the settings that shape the encoder plus where the run lives and is tracked."""

    out: str = knob("runs/pretrain", "storage location of the run: a path (local or NFS) or a URI such as "
                                     "s3://bucket/prefix; every node reads and writes the run there", identity=False)
    run_name: str | None = knob(None, "run name under --out (default: pretrain-<objective>)", identity=False)
    tracking_uri: str = knob(DEFAULT_TRACKING_URI, "MLflow tracking URI", identity=False)
    experiment: str = knob(EXPERIMENT, "MLflow experiment", identity=False)
    address: str | None = knob(None, "Ray cluster to run on (default: $RAY_ADDRESS, a cluster started here with "
                                     "`ray start`, else a local Ray)", identity=False)
    resume: bool = knob(False, "continue the run in --out from its latest checkpoint", identity=False)
    evaluate_on: list[str] = knob(factory=lambda: list(supervised_datasets() + fewshot_datasets()),
                                  help="datasets the encoder will be evaluated on: the corpus must exclude their "
                                       "entity pairs (unless allow_leakage)", identity=False)
    data_dir: str | None = knob(None, "where the evaluated datasets live, to check the corpus's exclusions against "
                                      "their current files", identity=False)
    # Fault injection for tests: the last rank exits abruptly at the start of this step, once
    # (``fail_marker`` is created first, and its presence disables the failure).
    fail_at_step: int | None = knob(None, "test hook: the last worker exits at this step", identity=False, cli=False)
    fail_marker: str | None = knob(None, "test hook: file whose presence disables fail_at_step", identity=False,
                                   cli=False)

    @property
    def name(self) -> str:
        return self.run_name or f"pretrain-{self.objective}"

    @property
    def storage_root(self) -> str:
        return resolve_storage(self.out, self.out)

    @property
    def run_uri(self) -> str:
        return Storage.from_uri(self.storage_root).join(self.name)

    @property
    def run_dir(self) -> Path:
        """The run folder when storage is a local path (tests and single-host runs read it directly)."""
        if is_uri(self.storage_root):
            raise ReconError(f"{self.storage_root} is not a local path")
        return Path(self.storage_root) / self.name


@dataclass(frozen=True)
class FinalEncoder:
    """The encoder of the last step: published in storage (``uri`` + ``digest``) and cached locally.

    ``heldout``: does the stage learn -- contrastive accuracy on held-out sentences at the start
    (``initial_*``, fresh runs) and at the last step, with the chance level of those batches (see
    ``recon.models.pretrain.steps.HeldoutScore``); empty when the run held nothing out.
    """

    uri: str
    digest: str
    local: Path
    heldout: dict = field(default_factory=dict, compare=False)


def _check_resume(cfg: PretrainRun, run: Storage) -> None:
    latest = latest_checkpoint(run)
    if not cfg.resume:
        if latest is not None or run.exists(CONFIG_FILE):
            raise ReconError(
                f"{run.uri} already holds a pre-training run; pass --resume to continue it from "
                f"{Path(latest).name if latest else 'its start'}, or choose another --out / run name"
            )
        return
    if not run.exists(CONFIG_FILE):
        raise ReconError(f"nothing to resume: {run.join(CONFIG_FILE)} does not exist (was the run started with "
                         "this --out?)")
    saved = run.read_json(CONFIG_FILE)
    current = cfg.to_dict()
    diffs = [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in current
             if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]]
    if diffs:
        raise ReconError(f"{run.join(CONFIG_FILE)}: --resume must use the run's settings; changed: " + "; ".join(diffs))


def _mlflow_run(cfg: PretrainRun, run: Storage) -> str:
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
    params = {k: ("" if v is None else str(v))[:500] for k, v in cfg.to_dict().items() if not k.startswith("fail_")}
    params["accum_steps"] = str(cfg.accum_steps)
    client.log_batch(created.info.run_id, params=[Param(k, v) for k, v in params.items()])
    run.write_json(MLFLOW_FILE, {"run_id": created.info.run_id, "tracking_uri": cfg.tracking_uri})
    return created.info.run_id


PROGRESS_DIR = "progress"  # <attempt>/<step>.json, one small file per logged step, written by rank 0


def progress_rel(attempt: str, step: int) -> str:
    return f"{PROGRESS_DIR}/{attempt}/{step:06d}.json"


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
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
        if self.log and files:
            self._say(self.rows[files[-1]])

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

    def stop(self) -> None:
        """Stop the thread, take the last files, and write ``progress.jsonl`` (attempt order)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        self.poll()
        self.run.write_text(PROGRESS_FILE, "".join(json.dumps(self.rows[k]) + "\n" for k in sorted(self.rows)))


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def _init_ray(cfg: PretrainRun) -> bool:
    """Join ``RAY_ADDRESS`` when set, else start a local Ray sized for the workers."""
    from recon.core.ray_session import ensure_ray

    return ensure_ray(address=cfg.address, num_cpus=max(2, math.ceil(cfg.num_workers * cfg.cpus_per_worker)))


def _publish_inputs(cfg: PretrainRun, root: Storage) -> tuple[dict, Any]:
    """The corpus (and a local starting encoder) as content-addressed folders in storage."""
    corpus_uri, corpus_digest = publish_dir(root, Path(cfg.corpus), "inputs/corpora")
    encoder: Any = cfg.encoder_name
    if Path(encoder).expanduser().is_dir():
        uri, digest = publish_dir(root, Path(encoder).expanduser(), "inputs/encoders")
        encoder = {"uri": uri, "digest": digest}
    return {"uri": corpus_uri, "digest": corpus_digest}, encoder


def heldout_summary(run: Storage, rows: list[dict] | None = None) -> dict:
    """Held-out figures of the run: the last reported ones (``heldout_*``, with their step) and the
    untrained encoder's (``initial_*``) when the run started from scratch in this folder."""
    rows = read_progress(run.uri) if rows is None else rows
    out: dict = {}
    scored = [r for r in rows if "heldout_contrastive_accuracy" in r]
    if scored:
        out = {"step": int(scored[-1]["step"]), **{k: scored[-1][k] for k in HELDOUT_KEYS if k in scored[-1]}}
    if out and run.exists(HELDOUT_START_FILE):
        start = run.read_json(HELDOUT_START_FILE)
        out.update({f"initial_{k}": start[k] for k in HELDOUT_KEYS if k in start})
    return out


def export_final(run: Storage, root: Storage, checkpoint_rel: str, name: str,
                 heldout: Optional[dict] = None) -> FinalEncoder:
    """Publish the encoder part of a training checkpoint (everything but ``train/``) and cache it here."""
    with tempfile.TemporaryDirectory(prefix="recon-final-") as tmp:
        local = run.download_dir(checkpoint_rel, Path(tmp) / "ckpt")
        shutil.rmtree(local / TRAIN_STATE_DIR, ignore_errors=True)
        uri, digest = publish_dir(root, local, f"{name}/final")
    heldout = dict(heldout or {})
    run.write_json(FINAL_FILE, {"uri": uri, "digest": digest, "step": step_of(Path(checkpoint_rel).name),
                                "heldout": heldout})
    return FinalEncoder(uri, digest, fetch_dir(uri, digest), heldout)


def final_encoder(run_uri: str) -> Optional[FinalEncoder]:
    """The published final encoder of a finished run (None when the run has not finished)."""
    run = Storage.from_uri(run_uri)
    if not run.exists(FINAL_FILE):
        return None
    record = run.read_json(FINAL_FILE)
    return FinalEncoder(record["uri"], record["digest"], fetch_dir(record["uri"], record["digest"]),
                        record.get("heldout") or {})


def run_pretraining(cfg: PretrainRun, log: Optional[Callable[[str], None]] = None) -> FinalEncoder:
    """Run (or resume) pre-training on Ray Train; return the final encoder (published and cached)."""
    import ray
    import ray.train
    from mlflow.tracking import MlflowClient
    from ray.train.torch import TorchConfig, TorchTrainer

    from recon.data_prep.corpus import read_manifest, require_exclusions

    if is_uri(cfg.corpus):
        raise ReconError(f"corpus {cfg.corpus}: give the corpus as a directory on this machine; recon publishes it "
                         "to the storage location for the worker nodes")
    read_manifest(cfg.corpus)  # fail here, not in every worker, when the corpus is missing
    leakage = require_exclusions(cfg.corpus, cfg.evaluate_on, allow_leakage=cfg.allow_leakage, data_dir=cfg.data_dir)
    cfg.corpus = str(Path(cfg.corpus).expanduser().resolve())
    cfg.tracking_uri = absolute_tracking_uri(cfg.tracking_uri)
    if cfg.fail_marker:
        cfg.fail_marker = str(Path(cfg.fail_marker).resolve())
    root = Storage.from_uri(cfg.storage_root)
    run = Storage.from_uri(cfg.run_uri)
    _check_resume(cfg, run)
    if not cfg.resume:
        run.write_json(CONFIG_FILE, cfg.to_dict())
    run_id = _mlflow_run(cfg, run)
    client = MlflowClient(cfg.tracking_uri)
    if not leakage.ok:  # allowed: say so where the run is read
        client.set_tag(run_id, "recon.leakage_allowed", ",".join(leakage.not_excluded))
    corpus, encoder = _publish_inputs(cfg, root)

    started = _init_ray(cfg)
    poller = ProgressPoller(cfg, run, run_id, log=log).start()
    resources = {"CPU": cfg.cpus_per_worker, **cfg.worker_resources}
    if cfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_uri": cfg.run_uri, "corpus": corpus, "encoder": encoder},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=cfg.storage_root,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:
        client.set_terminated(run_id, status="FAILED")
        raise ReconError(f"pre-training failed after {cfg.max_failures} restart(s): {exc}") from exc
    finally:
        poller.stop()
        if started:
            ray.shutdown()
    latest = latest_checkpoint(run)
    if latest is None or step_of(Path(latest).name) != cfg.steps:
        client.set_terminated(run_id, status="FAILED")
        raise ReconError(f"pre-training ended without a checkpoint at step {cfg.steps} in {run.uri}")
    heldout = heldout_summary(run)
    final = export_final(run, root, latest, cfg.name, heldout)
    if "initial_heldout_contrastive_accuracy" in heldout:  # the final figures reached MLflow with their step
        client.log_metric(run_id, "heldout_contrastive_accuracy_initial",
                          float(heldout["initial_heldout_contrastive_accuracy"]), step=0)
    client.log_artifacts(run_id, str(final.local), artifact_path="encoder")
    client.set_terminated(run_id, status="FINISHED")
    return final


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


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point (kept here so the trainer pickles a stable name)."""
    from recon.orchestration.pretrain.worker import train_loop_per_worker as loop

    loop(config)


__all__ = ["PretrainConfig", "PretrainRun", "FinalEncoder", "run_pretraining", "heldout_summary", "read_progress", "read_progress_rows",
           "final_encoder", "absolute_tracking_uri", "latest_checkpoint"]
