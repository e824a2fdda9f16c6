"""One sweep trial, on whichever node Tune places it: pre-train on Ray Train, probe checkpoints, report.

    trial(config)   # config: the sampled values ("pretrain.p_blank": 0.3, ...) + "sweep": the payload

1. The trial's id is the hash of its resolved configs (``SweepSpec.trial_id``). When
   ``<storage>/sweeps/<sweep>/trials/<id>/result.json`` exists the configuration has finished:
   its stored final score is reported again and nothing is trained.
2. Pre-training runs on Ray Train inside this Tune trial (a background thread calls
   ``TorchTrainer.fit``; workers need ``pretrain.worker_resources``), with checkpoints every
   ``ceil(steps / probes)`` steps in the trial's storage folder; an interrupted trial resumes from
   its newest complete checkpoint there. No MLflow here: the sweep driver is the only writer.
3. Each probed checkpoint (once complete: a later step was logged or training ended) is fetched
   into this node's temp dir and fine-tuned once per seed (``run_finetune``); each seed's result is
   stored (``probes/step_NNNNNN/seed_S.json``) so a resumed trial does not redo it, after its
   per-example predictions on the scored split (``seed_S.<dev|test>.jsonl``: ``run_finetune`` writes
   the dev ones on request), which ``confidence`` resamples for the objective's uncertainty. The median over
   seeds is reported to Tune, which lets the scheduler stop a hopeless trial at any probe.
4. ``result.json`` (written last) holds every probe, the objective and the pre-training curve.
"""
from __future__ import annotations

import json
import shutil
import socket
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from recon.core.errors import ReconError

from recon.orchestration.pretrain.checkpoints import TRAIN_STATE_DIR, complete_checkpoints, latest_checkpoint, step_of
from recon.core.storage import Storage

METRIC = "objective"  # the key of a trial's objective in its Tune reports (the searcher and scheduler read it)

SWEEPS = "sweeps"
RESULT_FILE = "result.json"
TRIAL_FILE = "trial.json"
PRETRAIN_RUN = "pretrain"


def sweep_rel(name: str, *parts: str) -> str:
    return "/".join([SWEEPS, name, *parts])


def trial_rel(name: str, trial_id: str, *parts: str) -> str:
    return sweep_rel(name, "trials", trial_id, *parts)


def probe_rel(name: str, trial_id: str, step: int, seed: int) -> str:
    return trial_rel(name, trial_id, "probes", f"step_{step:06d}", f"seed_{seed}.json")


def probe_predictions_rel(name: str, trial_id: str, step: int, seed: int, split: str) -> str:
    """The probe's per-example predictions on the split it is scored on (``confidence`` resamples them)."""
    return trial_rel(name, trial_id, "probes", f"step_{step:06d}", f"seed_{seed}.{split}.jsonl")


def _node() -> dict:
    import ray

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {"hostname": socket.gethostname(), "node_id": node_id}


# ---------------------------------------------------------------- pre-training (Ray Train, no MLflow)

class PretrainThread(threading.Thread):
    """``TorchTrainer.fit`` of one trial's pre-training, in the background of the Tune trial."""

    def __init__(self, cfg, corpus: dict, encoder: Any) -> None:
        super().__init__(name="recon-sweep-pretrain", daemon=True)
        self.cfg, self.corpus, self.encoder = cfg, corpus, encoder
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        from recon.orchestration.pretrain.trainer import build_trainer

        trainer = build_trainer(self.cfg, self.corpus, self.encoder)                    # [Ray Train in Tune]
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the probing loop
            self.error = exc


def logged_steps(run: Storage) -> list[int]:
    """Steps rank 0 has logged (``progress/<attempt>/<step>.json``) in a pre-training run folder."""
    from recon.orchestration.pretrain.run import PROGRESS_DIR

    if not run.exists(PROGRESS_DIR):
        return []
    steps = []
    for rel in run.list(PROGRESS_DIR):
        name = Path(rel).name
        if name.endswith(".json") and name[:-5].isdigit():
            steps.append(int(name[:-5]))
    return steps


def write_progress(run: Storage) -> list[dict]:
    """Collect rank 0's per-step files into ``progress.jsonl`` (attempt order) and return one row per step."""
    from recon.orchestration.pretrain.run import PROGRESS_DIR, PROGRESS_FILE
    from recon.orchestration.pretrain.progress import read_progress

    files = sorted(f for f in (run.list(PROGRESS_DIR) if run.exists(PROGRESS_DIR) else []) if f.endswith(".json"))
    run.write_text(PROGRESS_FILE, "".join(json.dumps(run.read_json(f)) + "\n" for f in files))
    return read_progress(run.uri)


def curve_summary(rows: list[dict]) -> dict[str, float]:
    """The pre-training curve in a few numbers (MLflow metrics of the trial's run)."""
    if not rows:
        return {}
    out: dict[str, float] = {"pretrain_steps_logged": float(len(rows))}
    losses = [float(r["loss"]) for r in rows if "loss" in r]
    if losses:
        out.update(pretrain_loss_first=losses[0], pretrain_loss_last=losses[-1], pretrain_loss_min=min(losses))
    for key in ("contrastive_accuracy", "mlm_loss"):
        values = [float(r[key]) for r in rows if key in r]
        if values:
            out[f"pretrain_{key}_last"] = values[-1]
    speeds = [float(r["sentences_per_s"]) for r in rows if "sentences_per_s" in r]
    if speeds:
        out["pretrain_sentences_per_s"] = statistics.mean(speeds)
    return out


def _wait_ready(run: Storage, step: int, thread: Optional[PretrainThread], poll_s: float = 1.0) -> str:
    """The relative path of the complete checkpoint at ``step``, once no process still writes it."""
    while True:
        done = thread is None or not thread.is_alive()
        found = complete_checkpoints(run)
        if step in found and (done or max(logged_steps(run), default=0) > step):
            return found[step]
        if done:
            if thread is not None and thread.error is not None:
                raise ReconError(f"pre-training failed: {thread.error}") from thread.error
            raise ReconError(f"pre-training ended without a checkpoint at step {step} in {run.uri}")
        time.sleep(poll_s)


# ---------------------------------------------------------------- probes

def probe_checkpoint(checkpoint_dir: Path, probe, seed: int, data_dir: Optional[str], trial_id: str,
                     score_on: str, metric: str) -> dict:
    """One short fine-tune of a pre-trained checkpoint; returns its score and the run's dev/test figures."""
    from recon.models.train.finetune import run_finetune

    cfg = probe.replace(model=str(checkpoint_dir), source_identity=trial_id,
                        data=probe.data.replace(data_dir=data_dir),
                        training=probe.training.replace(seed=seed, progress=False))
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="recon-probe-") as out:
        result = run_finetune(cfg, out_dir=out, dev_predictions=score_on == "dev")
        written = Path(out) / ("dev_predictions.jsonl" if score_on == "dev" else "predictions.jsonl")
        predictions = written.read_text(encoding="utf-8")
    scores = result.get(score_on) or {}
    if metric not in scores:
        raise ReconError(f"probe result has no {score_on} {metric!r} (has: {', '.join(sorted(scores))})")
    return {"seed": seed, "score": float(scores[metric]), "dev": result.get("dev"), "test": result.get("test"),
            "metric": result.get("metric"), "negative_label": result.get("negative_label"),
            "n_train": result.get("n_train"), "n_dev": result.get("n_dev"), "n_test": result.get("n_test"),
            "seconds": round(time.time() - start, 2), "predictions": predictions}


def run_trial(config: dict, report: Callable[[dict], None]) -> dict:
    """The whole trial (Ray Tune-free except for ``report``): returns the result written to storage."""
    import torch

    from recon.orchestration.pretrain.run import CONFIG_FILE, PretrainRun
    from recon.orchestration.study.data import materialize
    from recon.orchestration.sweep.spec import sweep_from_payload

    payload = config["sweep"]
    spec = sweep_from_payload(payload["spec"])
    params = {path: config[path] for path in spec.domains}
    trial_id = spec.trial_id(params, corpus_identity=payload["corpus_identity"])
    storage = Storage.from_uri(payload["storage"])
    done_rel = trial_rel(spec.name, trial_id, RESULT_FILE)
    probe_steps = spec.probe_steps()
    if storage.exists(done_rel):  # finished before (another trial, or before an interruption): report, no training
        result = storage.read_json(done_rel)
        last = result["probes"][-1]  # the final score only: an early-stopping rule must not stop a finished trial
        report({METRIC: last["objective"], "pretrain_step": last["step"], "probe": len(result["probes"]),
                "final": 1, "cached": 1, "trial_hash": trial_id})
        return result

    torch.set_num_threads(max(1, int(payload.get("threads", 1))))
    start = time.time()
    pretrain, probe = spec.resolve(params)
    storage.write_json(trial_rel(spec.name, trial_id, TRIAL_FILE),
                       {"trial_id": trial_id, "params": params, "pretrain": pretrain.to_dict(),
                        "probe": probe.to_dict(), "probe_steps": probe_steps, "seeds": spec.objective.seeds})
    # One marker per training attempt (tests count them: a finished configuration never trains again).
    storage.write_text(trial_rel(spec.name, trial_id, "attempts", f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"),
                       json.dumps(_node()))
    cfg = PretrainRun(**{**pretrain.to_dict(), "corpus": payload["corpus"]["uri"], "evaluate_on": [],
                         "out": storage.join(trial_rel(spec.name, trial_id)), "run_name": PRETRAIN_RUN,
                         "allow_leakage": True})  # the driver checked the corpus's exclusions once
    run = Storage.from_uri(cfg.run_uri)
    if not run.exists(CONFIG_FILE):
        run.write_json(CONFIG_FILE, cfg.to_dict())
    latest = latest_checkpoint(run)
    thread = None
    if latest is None or (step_of(Path(latest).name) or 0) < cfg.steps:
        thread = PretrainThread(cfg, payload["corpus"], payload["encoder"])
        thread.start()
    data_dir = materialize(payload["data"])
    probes: list[dict] = []
    result: dict = {}
    try:
        for i, step in enumerate(probe_steps):
            scores, rows = {}, []
            for seed in spec.objective.seeds:
                rel = probe_rel(spec.name, trial_id, step, seed)
                if storage.exists(rel):
                    row = storage.read_json(rel)
                else:
                    ckpt = _wait_ready(run, step, thread)
                    with tempfile.TemporaryDirectory(prefix=f"recon-sweep-{trial_id}-") as tmp:
                        local = run.download_dir(ckpt, Path(tmp) / "ckpt")
                        shutil.rmtree(local / TRAIN_STATE_DIR, ignore_errors=True)
                        row = probe_checkpoint(local, probe, seed, data_dir, trial_id, spec.objective.score_on,
                                               spec.objective.metric)
                    row.update(step=step, node=_node())
                    # predictions first: the seed's result file is what marks the probe done
                    storage.write_text(probe_predictions_rel(spec.name, trial_id, step, seed, spec.objective.score_on),
                                       row.pop("predictions"))
                    storage.write_json(rel, row)
                scores[seed] = row["score"]
                rows.append(row)
            objective = statistics.median(scores.values())
            probes.append({"step": step, "objective": objective, "scores": {str(k): v for k, v in scores.items()},
                           "seconds": round(sum(r.get("seconds", 0) for r in rows), 2)})
            final = i == len(probe_steps) - 1
            row = {METRIC: objective, "pretrain_step": step, "probe": i + 1, "final": int(final), "cached": 0,
                   "trial_hash": trial_id}
            if final:  # everything is written before the last report: the scheduler may end the trial there
                if thread is not None:
                    thread.join()
                    if thread.error is not None:
                        raise ReconError(f"pre-training failed: {thread.error}") from thread.error
                result = _finish(storage, run, done_rel, cfg.steps, {
                    "trial_id": trial_id, "params": params, "probes": probes, "objective": objective,
                    "score_on": spec.objective.score_on, "seeds": spec.objective.seeds, "node": _node(),
                    "seconds": round(time.time() - start, 1)})
            report(row)
    finally:
        if thread is not None and thread.is_alive():  # a probe failed: stop waiting, the actor's exit ends Train
            thread.join(timeout=0)
    return result


def _finish(storage: Storage, run: Storage, done_rel: str, steps: int, result: dict) -> dict:
    """The pre-training curve into the result; ``result.json`` written (last); checkpoints thinned."""
    result["pretrain_curve"] = curve_summary(write_progress(run))
    # Only the last checkpoint's encoder is kept: the optimizer state and earlier steps are GBs per trial.
    for step_done, rel in complete_checkpoints(run).items():
        if step_done != steps:
            run.delete(rel)
        else:
            run.delete(f"{rel}/{TRAIN_STATE_DIR}")
    storage.write_json(done_rel, result)
    return result


def sweep_trainable(config: dict) -> None:
    """Ray Tune's entry point: ``run_trial`` with ``tune.report``."""
    from ray import tune

    run_trial(config, tune.report)


__all__ = ["METRIC", "sweep_trainable", "run_trial", "sweep_rel", "trial_rel", "probe_rel", "probe_predictions_rel",
           "curve_summary", "SWEEPS", "RESULT_FILE", "TRIAL_FILE", "PRETRAIN_RUN"]
