"""CP/MTB pre-training on Ray Train: the driver (config, storage, MLflow, the final encoder).

    cfg = PretrainRun(objective="cp", corpus="runs/corpus", num_workers=2, steps=200, batch_size=64)
    final = run_pretraining(cfg)       # final.local: a recon checkpoint for `recon finetune --model`

One optimizer step = ``num_workers x micro_batch_size x accum`` pairs (= ``batch_size``, the paper's
"batch size N": N positive pairs, 2N sentences). The worker loop is ``recon.orchestration.pretrain.worker``
(the Ray-free steps of ``recon.models.pretrain.loop.run_steps`` plus a few Ray lines); checkpoint
discovery is ``recon.orchestration.pretrain.checkpoints``.

The run's folder: ``recon.orchestration.pretrain.run``; its metrics: ``...pretrain.progress``; the
TorchTrainer: ``...pretrain.trainer``. Everything lives in the run's storage folder ``<out>/<run name>/`` (a path or a URI, see
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

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from recon.core.errors import ReconError
from recon.core.storage import Storage
from recon.core.node_cache import fetch_dir, publish_dir
from recon.orchestration.pretrain.checkpoints import TRAIN_STATE_DIR, latest_checkpoint, step_of
from recon.orchestration.pretrain.progress import ProgressPoller, mlflow_run, read_progress
from recon.orchestration.pretrain.run import (CONFIG_FILE, FINAL_FILE, HELDOUT_KEYS, HELDOUT_START_FILE,
                                              RESUMABLE_CHANGES, PretrainRun)
from recon.orchestration.pretrain.trainer import build_trainer
from recon.orchestration.tracking.client import SOURCE_NAME_TAG, SOURCE_TYPE_TAG, log_artifacts_redacted
from recon.orchestration.tracking.uri import DEFAULT_TRACKING_URI, absolute_tracking_uri, chosen_tracking_uri

@dataclass(frozen=True)
class FinalEncoder:
    """The encoder of the last step: published in storage (``uri`` + ``digest``) and cached locally.

    ``heldout``: does the stage learn -- contrastive accuracy on held-out sentences at the start
    (``initial_*``, fresh runs) and at the last step, with the chance level of those batches (see
    ``recon.models.pretrain.heldout.HeldoutScore``); empty when the run held nothing out.
    """

    uri: str
    digest: str
    local: Path
    heldout: dict = field(default_factory=dict, compare=False)
    model_id: Optional[str] = field(default=None, compare=False)  # the MLflow model logged from it, if any


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


def run_pretraining(cfg: PretrainRun, log: Optional[Callable[[str], None]] = None,
                    model_tags: Optional[dict[str, str]] = None) -> FinalEncoder:
    """Run (or resume) pre-training on Ray Train; return the final encoder (published and cached) and log it
    as the run's MLflow model (``model_tags`` added to its own ``recon.*`` tags, e.g. a study's stage)."""
    import ray
    from mlflow.tracking import MlflowClient

    from recon.core.preflight import Preflight
    from recon.data_prep.corpus import require_exclusions
    from recon.orchestration.pretrain.preflight import pretrain_cluster_problems, pretrain_problems
    from recon.orchestration.tracking.health import fail_fast_http

    fail_fast_http()  # an MLflow call to a server that is down fails in seconds, not minutes
    tracking_uri = absolute_tracking_uri(chosen_tracking_uri(cfg.tracking_uri, DEFAULT_TRACKING_URI))
    pf = Preflight("recon pretrain")
    pf.extend(pretrain_problems(cfg, tracking_uri))
    pf.raise_if_any()
    leakage = require_exclusions(cfg.corpus, cfg.evaluate_on, allow_leakage=cfg.allow_leakage, data_dir=cfg.data_dir)
    cfg.corpus = str(Path(cfg.corpus).expanduser().resolve())
    cfg.tracking_uri = tracking_uri
    if cfg.fail_marker:
        cfg.fail_marker = str(Path(cfg.fail_marker).resolve())
    root = Storage.from_uri(cfg.storage_root)
    run = Storage.from_uri(cfg.run_uri)
    _check_resume(cfg, run)

    started = _init_ray(cfg)
    try:
        pf = Preflight("recon pretrain")
        pf.extend(pretrain_cluster_problems(cfg))
        pf.raise_if_any()
        if not cfg.resume:
            run.write_json(CONFIG_FILE, cfg.to_dict())
        run_id = mlflow_run(cfg, run)
        client = MlflowClient(cfg.tracking_uri)
        if not leakage.ok:  # allowed: say so where the run is read
            client.set_tag(run_id, "recon.leakage_allowed", ",".join(leakage.not_excluded))
        corpus, encoder = _publish_inputs(cfg, root)
        poller = ProgressPoller(cfg, run, run_id, log=log).start()
        trainer = build_trainer(cfg, corpus, encoder)
        try:
            trainer.fit()
        except KeyboardInterrupt:
            _terminate(client, run_id, "KILLED")
            raise
        except Exception as exc:
            _terminate(client, run_id, "FAILED")
            raise ReconError(f"pre-training failed after {cfg.max_failures} restart(s): {exc}") from exc
        finally:
            poller.stop()
    finally:
        if started:
            ray.shutdown()
    latest = latest_checkpoint(run)
    if latest is None or step_of(Path(latest).name) != cfg.steps:
        _terminate(client, run_id, "FAILED")
        raise ReconError(f"pre-training ended without a checkpoint at step {cfg.steps} in {run.uri}")
    heldout = heldout_summary(run)
    final = export_final(run, root, latest, cfg.name, heldout)
    try:
        if "initial_heldout_contrastive_accuracy" in heldout:  # the final figures reached MLflow with their step
            client.log_metric(run_id, "heldout_contrastive_accuracy_initial",
                              float(heldout["initial_heldout_contrastive_accuracy"]), step=0)
        log_artifacts_redacted(client, run_id, final.local, artifact_path="encoder")
        final = _log_model(cfg, client, run_id, final, model_tags, log)
        client.set_terminated(run_id, status="FINISHED")
    except Exception as exc:  # noqa: BLE001 - the encoder is trained and published: an outage must not lose it
        if not poller.gate.is_outage(exc):
            raise
        (log or print)(f"pre-training {cfg.name}: done, its final encoder is in storage ({final.uri}); the MLflow "
                       f"server {cfg.tracking_uri} did not answer, so its run there is left unfinished (the steps' "
                       f"metrics are in {run.join('progress.jsonl')})")
    return final


def _terminate(client, run_id: str, status: str) -> None:
    """End the MLflow run with ``status``; a server that does not answer is not a second error."""
    try:
        client.set_terminated(run_id, status=status)
    except Exception:  # noqa: BLE001 - the error that stopped the run is the one to report
        pass


def _log_model(cfg: PretrainRun, client, run_id: str, final: FinalEncoder, model_tags: Optional[dict[str, str]],
               log: Optional[Callable[[str], None]]) -> FinalEncoder:
    """The final encoder as an MLflow model of the run (``pretrain.mlflow_model``). The encoder in storage is
    the product; when MLflow cannot take the model the run says why and pre-training still succeeds."""
    import dataclasses

    from recon.orchestration.pretrain.mlflow_model import DIGEST_TAG, log_encoder_model

    tags = {"recon.objective": cfg.objective, "recon.run": cfg.name, DIGEST_TAG: final.digest,
            SOURCE_NAME_TAG: f"recon pretrain {cfg.name}", SOURCE_TYPE_TAG: "LOCAL", **(model_tags or {})}
    try:
        model_id = log_encoder_model(cfg.tracking_uri, run_id, final.local, name=f"{cfg.name}-encoder",
                                     step=int(cfg.steps), tags=tags)
    except Exception as exc:  # noqa: BLE001 - reported on the run and the console, never lost
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        client.set_tag(run_id, "recon.model_error", message)
        if log:
            log(f"[pretrain {cfg.name}] the encoder is in storage ({final.uri}) but MLflow did not take it as a "
                f"model: {message}")
        return final
    client.set_tag(run_id, "recon.model_id", model_id)
    return dataclasses.replace(final, model_id=model_id)


__all__ = ["PretrainRun", "FinalEncoder", "run_pretraining", "heldout_summary", "final_encoder", "export_final"]
