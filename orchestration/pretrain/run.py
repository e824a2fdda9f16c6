"""A pre-training run: its settings (:class:`PretrainRun`) and its folder in storage.

Everything lives in the run's storage folder ``<out>/<run name>/`` (a path or a URI, see
``recon.core.storage``), never on a node's own disk: Ray's ``checkpoint_step_NNNNNN/`` folders,
``config.json`` (what the run was started with), ``mlflow_run.json`` (the MLflow run to continue on
resume), ``progress/<attempt>/<step>.json`` (one small file per logged step, written by rank 0),
``progress.jsonl`` (every row, written by the driver), ``heldout_start.json`` and ``final.json``
(where the final encoder was published, content-addressed).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recon.core.config import knob
from recon.core.errors import ReconError
from recon.core.storage import Storage, is_uri, resolve_storage
from recon.data_prep.registry import fewshot_datasets, supervised_datasets
from recon.models.pretrain.config import PretrainConfig
from recon.orchestration.tracking.uri import DEFAULT_TRACKING_URI

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


PROGRESS_DIR = "progress"  # <attempt>/<step>.json, one small file per logged step, written by rank 0


def progress_rel(attempt: str, step: int) -> str:
    return f"{PROGRESS_DIR}/{attempt}/{step:06d}.json"


@dataclass
class PretrainRun(PretrainConfig):
    """A pre-training run: the settings that shape the encoder plus where the run lives and is tracked."""

    out: str = knob("runs/pretrain", "storage location of the run: a path (local or NFS) or a URI such as "
                                     "s3://bucket/prefix; every node reads and writes the run there", identity=False)
    run_name: str | None = knob(None, "run name under --out (default: pretrain-<objective>)", identity=False)
    tracking_uri: str | None = knob(None, f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                          f"{DEFAULT_TRACKING_URI})", identity=False)
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


__all__ = ["PretrainRun", "PROGRESS_FILE", "PROGRESS_DIR", "CONFIG_FILE", "MLFLOW_FILE", "FINAL_FILE",
           "HELDOUT_START_FILE", "HELDOUT_KEYS", "EXPERIMENT", "RESUMABLE_CHANGES", "progress_rel"]
