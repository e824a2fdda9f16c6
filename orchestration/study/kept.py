"""Test views added to a finished study, scored on its trials' kept weights instead of training them again.

A view is an evaluation of a trial's trained weights (outside the trial id), so a trial that finished before its
grid asked for a view stays finished. Where the trial kept its weights (``keep_weights``: ``weights.safetensors``
beside ``result.json`` in the study's storage, named in the result's ``weights``), ``recon study run`` schedules
one CPU-only Ray task per such trial (:func:`evaluate_task`): the model is rebuilt from the trial's config, the
weights loaded, the stored test predictions checked against the ones they give again, and only the missing
views scored. The task merges the new views into the trial's ``result.json`` and ``view_predictions.jsonl`` in
storage (``view_predictions.jsonl`` first, ``result.json`` last); the driver then adds their figures and the
merged file to the trial's existing FINISHED MLflow run (:meth:`StudyTracker.add_views`), never a second run.

A trial without kept weights is left as it is: nothing trains again on its own; ``recon study plan`` says what
training it again would cost (:func:`split_lacking`).

The check that the weights give the stored predictions again is exact, so the evaluation must compute as the
training did: a trial trained on a GPU, or on a CPU with native bf16 evaluated on one without, may differ in a
few near-tied predictions and is then refused with the count (the task runs on CPUs only).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from recon.core.storage import Storage
from recon.orchestration.study.trainable import RESULT_FILE, result_rel, trial_inputs
from recon.orchestration.study.trainers import load_evaluator
from recon.orchestration.study.trial import Trial

VIEW_PREDICTIONS = "view_predictions.jsonl"


def kept_weights(storage: Storage, trial_id: str) -> Optional[str]:
    """The file name of a finished trial's kept weights, when its ``result.json`` names one that is in storage."""
    if not storage.exists(result_rel(trial_id)):
        return None
    info = storage.read_json(result_rel(trial_id)).get("weights")
    name = info.get("file") if isinstance(info, dict) else None
    return name if name and storage.exists(result_rel(trial_id, name)) else None


def split_lacking(trials: Sequence[Trial], lacking: dict[str, list[str]], storage: Storage,
                  evaluator: Callable[[Trial], bool]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``lacking`` (trial id -> views) split into (scored from kept weights, needing training again): from kept
    weights when the trial kept them and ``evaluator(trial)`` says its trainer can score them."""
    by_id = {t.trial_id: t for t in trials}
    from_weights, retrain = {}, {}
    for tid, views in lacking.items():
        trial = by_id.get(tid)
        if trial is not None and evaluator(trial) and kept_weights(storage, tid):
            from_weights[tid] = views
        else:
            retrain[tid] = views
    return from_weights, retrain


def merge_views(result: dict, rows_text: str, added: dict, new_rows: Sequence[dict]) -> tuple[dict, str]:
    """The trial's result and ``view_predictions.jsonl`` text with the views in ``added`` put in (a view scored
    again replaces its old summary and rows; the others are kept as they were)."""
    merged = {**result, "views": {**(result.get("views") or {}), **added}}
    kept_rows = [line for line in rows_text.splitlines() if line.strip() and json.loads(line).get("view") not in added]
    return merged, "".join(line + "\n" for line in kept_rows) + "".join(json.dumps(r) + "\n" for r in new_rows)


def evaluate_task(config: dict) -> dict:
    """One trial's missing views from its kept weights, on a worker (a Ray task): download what the evaluation
    reads, score, merge into storage. ``config``: a Tune trial's config plus ``views`` (the views to add)."""
    trial, storage, request_for = trial_inputs(config)
    views = list(config["views"])
    start = time.time()
    prefix = result_rel(trial.trial_id, "")
    result = storage.read_json(result_rel(trial.trial_id))
    weights = (result.get("weights") or {}).get("file")
    with tempfile.TemporaryDirectory(prefix=f"recon-views-{trial.trial_id}-") as tmp:
        out = Path(tmp)
        for name in (RESULT_FILE, "predictions.jsonl", weights):
            (out / name).write_bytes(storage.read_bytes(prefix + name))
        request = request_for(out)
        request.config = request.config.replace(eval_views=tuple(views))
        evaluator = load_evaluator(config.get("trainer"), trial.kind)
        if evaluator is None:
            raise RuntimeError(f"trial {trial.trial_id}: its trainer cannot score kept weights")
        scored = evaluator(request)
    rows_rel = prefix + VIEW_PREDICTIONS
    rows_text = storage.read_text(rows_rel) if storage.exists(rows_rel) else ""
    merged, text = merge_views(result, rows_text, scored["views"], scored["view_predictions"])
    wall = round(time.time() - start, 3)
    merged["views_from_weights"] = {**(result.get("views_from_weights") or {}),
                                    **{v: {"predictions_checked": scored.get("predictions_checked", 0),
                                           "wall_s": wall, "at": round(start, 3)} for v in views}}
    storage.write_text(rows_rel, text)
    storage.write_text(result_rel(trial.trial_id), json.dumps(merged, indent=2, default=str) + "\n")
    return {"trial_id": trial.trial_id, "views": views, "wall_s": wall,
            "predictions_checked": scored.get("predictions_checked", 0),
            "errors": {v: s["error"] for v, s in scored["views"].items() if "error" in s}}


def log_added_views(tracker: Any, trial: Trial, run: Any, storage: Storage, views: Sequence[str]) -> None:
    """The trial's new views into its existing MLflow run, from storage (the merged result and predictions)."""
    result = storage.read_json(result_rel(trial.trial_id))
    with tempfile.TemporaryDirectory(prefix="recon-views-log-") as tmp:
        files = []
        for name in (VIEW_PREDICTIONS, RESULT_FILE):
            path = Path(tmp) / name
            path.write_bytes(storage.read_bytes(result_rel(trial.trial_id, name)))
            files.append(path)
        tracker.add_views(trial, run.info.run_id, result, views, files)


def evaluate_from_weights(todo: dict[str, list[str]], by_id: dict[str, Trial], base_config: dict, tracker: Any,
                          runs: dict[str, Any], storage: Storage, cpus: float,
                          log: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """Score each trial's missing views from its kept weights (one CPU-only Ray task per trial, all submitted at
    once: Ray runs as many as the cluster's CPUs allow) and add them to its MLflow run as each one finishes;
    returns (the trials done, the trials failed)."""
    import ray

    task = ray.remote(num_cpus=cpus, num_gpus=0, max_retries=0)(evaluate_task)
    pending = {task.remote({**base_config, "trial": by_id[tid].to_dict(), "views": views}): tid
               for tid, views in todo.items()}
    done, failed = [], []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        tid = pending.pop(ready[0])
        try:
            out = ray.get(ready[0])
            log_added_views(tracker, by_id[tid], runs[tid], storage, todo[tid])
        except Exception as exc:  # noqa: BLE001 - one trial's views must not cost the others theirs
            lines = [line for line in str(exc).splitlines() if line.strip()]
            log(f"trial {tid}: views {', '.join(todo[tid])} not scored from its kept weights "
                f"({lines[-1][:300] if lines else type(exc).__name__})")
            failed.append(tid)
            continue
        problems = "; ".join(f"{v}: {e}" for v, e in out["errors"].items())
        log(f"trial {tid}: {', '.join(out['views'])} scored from kept weights in {out['wall_s']:.1f} s "
            f"({out['predictions_checked']} stored test predictions reproduced){'; failed ' + problems if problems else ''}")
        done.append(tid)
    return done, failed


__all__ = ["kept_weights", "split_lacking", "merge_views", "evaluate_task", "log_added_views",
           "evaluate_from_weights", "VIEW_PREDICTIONS"]
