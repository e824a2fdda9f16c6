"""The function Ray Tune runs for one trial, on whichever node Tune places it.

It reads only what arrives with the trial: its config, a dataset manifest and encoder references,
all resolved through the storage location into this node's cache (``recon.core.storage``).
It writes its outputs (``result.json``, ``metrics.json``, ``predictions.jsonl``) to
``<storage>/results/<trial id>/``, ``result.json`` last, so present means complete; the final
``tune.report`` carries the result's metrics to the driver. It is the trial's only report: a study schedules
nothing on intermediate results, and every report is a round trip through Tune's driver between trials (the
epochs' metrics reach MLflow from the result's history). The driver then logs the trial to MLflow
from storage: it never reads a worker's disk, and after a restart it finds finished trials there.

Workers are long-lived: the study runs Tune with ``reuse_actors=True``, so one worker process runs
trial after trial. What a trial reads once (imports, the encoder's weights and tokenizer, parsed
datasets, encoded splits: ``recon.models.nets.encoder`` / ``finetune`` / ``batching`` caches) is kept for
the next; every trial starts from the same process state (:func:`reset_process_state`) and builds
its own model, so its result does not depend on what ran before it in that process.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

from recon.orchestration.study.trial import Trial
from recon.core.storage import Storage
from recon.core.node_cache import fetch_dir
from recon.orchestration.study.data import materialize
from recon.orchestration.study.trainers import TrialRequest, load_trainer, resolve_references

RESULTS = "results"
RESULT_FILE = "result.json"


def result_rel(trial_id: str, name: str = RESULT_FILE) -> str:
    return f"{RESULTS}/{trial_id}/{name}"


def publish_result(storage: Storage, trial_id: str, out_dir: Path, result: dict) -> str:
    """Upload the trial's files, then ``result.json`` (atomic): its presence marks the trial complete."""
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and path.name != RESULT_FILE:
            storage.upload_file(path, result_rel(trial_id, str(path.relative_to(out_dir))))
    storage.write_text(result_rel(trial_id), json.dumps(result, indent=2, default=str) + "\n")
    return storage.join(result_rel(trial_id))


def reset_process_state(threads: int, seed: int | None = None) -> None:
    """What a trial may change process-wide, set as a fresh worker has it: torch threads, autograd on,
    non-deterministic kernels allowed (``fit`` asks for its own), and the global random generators
    seeded from the trial (the default trainers seed themselves; a custom one then does not depend
    on the trials run before it in a reused worker)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    torch.set_grad_enabled(True)
    if torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(False)
    if seed is not None:
        from recon.models.nets.seed import seed_everything

        seed_everything(int(seed))


def trial_inputs(config: dict) -> tuple[Trial, Storage, Callable[[Path], TrialRequest]]:
    """What a task for one trial needs on its node (a Tune trial, or an evaluation of kept weights): the trial,
    the storage, and its request for an output folder, with checkpoints and data fetched into this node's cache
    and the process state reset as a fresh worker has it."""
    from recon.models.train import batching

    from recon.core.storage import default_cache_dir

    trial = Trial.from_dict(config["trial"])
    reset_process_state(config.get("threads", 1), trial.seed)
    batching.DISK_CACHE_DIR = str(default_cache_dir())  # encoded splits shared by the node's workers
    storage = Storage.from_uri(config["storage"])
    checkpoints = {ref: str(fetch_dir(entry["uri"], entry["digest"])) for ref, entry in config["checkpoints"].items()
                   if ref in (trial.config.get("model"), trial.config.get("encoder"))}
    data_dir = materialize(config["data"])
    resolved = resolve_references(trial, checkpoints, data_dir)
    return trial, storage, lambda out_dir: TrialRequest(trial=trial, out_dir=out_dir, config=resolved, data_dir=data_dir)


def tune_trainable(config: dict) -> None:
    """One trial: fetch inputs into this node's cache, train, publish outputs, report the final metrics."""
    import ray
    from ray import tune

    from recon.orchestration.study.tracker import final_metrics

    trial, storage, request_for = trial_inputs(config)
    with tempfile.TemporaryDirectory(prefix=f"recon-trial-{trial.trial_id}-") as tmp:
        request = request_for(Path(tmp))
        trainer = load_trainer(config.get("trainer"), trial.kind)
        start = time.time()
        result = trainer(request, [])  # one report per trial, at the end: a study schedules nothing on epochs
        result.setdefault("seconds", round(time.time() - start, 3))
        result["node"] = {"hostname": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id(),
                          "pid": os.getpid(), "started": start}  # the same pid across trials: a reused worker
        uri = publish_result(storage, trial.trial_id, Path(tmp), result)
    tune.report({**final_metrics(trial, result), "result_uri": uri, "node_id": result["node"]["node_id"],
                 "done": True})


__all__ = ["tune_trainable", "trial_inputs", "reset_process_state", "publish_result", "result_rel", "RESULTS",
           "RESULT_FILE"]
