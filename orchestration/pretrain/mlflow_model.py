"""A pre-trained CP/MTB encoder as an MLflow model (an MLflow 3 ``LoggedModel``), linked to its runs.

Why a LoggedModel and not the registry: MLflow 3's experiment page lists an experiment's LoggedModels in
its **Models** tab, with the metrics logged for them and the run that produced them, and a run page lists
the models it produced and took as inputs. Registering would add a name in the workspace-wide registry,
which a study has no use for; a registered version can still be made from the model later
(``mlflow.register_model("models:/<model id>", NAME)``).

* :func:`log_encoder_model` (the pre-training driver, after the last step): the final checkpoint exported
  as a plain Hugging Face encoder (``recon export``'s directory) inside a pyfunc model whose code is
  ``encoder_pyfunc.py`` (models from code: loading it needs no recon). It is logged from the pre-training
  run at its last step, so MLflow links the run (source run, the run's output) and gives the model the
  metrics the run logged at that step: loss, contrastive accuracy and the held-out figures.
* :func:`encoder_model_id` / :func:`link_model_input` (the study's trial writer): a fine-tuning trial that
  starts from a study's stage logs that stage's model as an input of its run, the MLflow 3 way to say
  "this run used that model".

Models carry ``recon.*`` tags (objective, run name, the checkpoint's content digest, and for a study's
stage its name and content hash) to find them by.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

#: The model's type in MLflow (``model_type``), to filter the Models tab and searches by.
MODEL_TYPE = "relation-encoder"
STAGE_HASH_TAG = "recon.stage_hash"
DIGEST_TAG = "recon.encoder_digest"
CODE_FILE = Path(__file__).with_name("encoder_pyfunc.py")


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API (which ``log_model`` is) pointed at ``uri`` for the block, then back: recon's
    writers otherwise use explicit clients, and a process's global tracking URI stays as it was."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield


def _requirements() -> list[str]:
    """What loading the model needs (given, so MLflow does not load it in a subprocess to guess)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "transformers", "pandas", "numpy")]


def _example(markers: Mapping[str, str]) -> list[str]:
    """One marked sentence (C+M), the model's input example: MLflow runs the model on it when logging, and
    infers the signature (a list of strings in, a list of float vectors out) from it and the type hints."""
    return [f"{markers['head_start']} Bill Gates {markers['head_end']} founded {markers['tail_start']} Microsoft "
            f"{markers['tail_end']} ."]


def find_encoder_model(client, experiment_id: str, **tags: str) -> Optional[Any]:
    """The newest READY relation-encoder model of the experiment whose ``recon.*`` tags match ``tags``."""
    clauses = [f"tags.`recon.{key}` = '{value}'" for key, value in tags.items()]
    models = client.search_logged_models([experiment_id], filter_string=" AND ".join(clauses) or None,
                                         order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    ready = [m for m in models if str(getattr(m.status, "name", m.status)).upper() == "READY"]
    return ready[0] if ready else None


def log_encoder_model(tracking_uri: str, run_id: str, checkpoint: Path, *, name: str, step: int,
                      tags: Mapping[str, str]) -> str:
    """Log ``checkpoint`` (a recon checkpoint directory) as the run's model at ``step``; returns its model id.

    Idempotent per run and checkpoint: a READY model of the same run and digest (a driver restarted after
    logging it) is returned instead of logging a second one.
    """
    import json

    import mlflow
    from mlflow.tracking import MlflowClient

    from recon.orchestration.pretrain.export import export_checkpoint

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    tags = {k: str(v) for k, v in tags.items()}
    if DIGEST_TAG in tags:
        existing = find_encoder_model(client, run.info.experiment_id, encoder_digest=tags[DIGEST_TAG])
        if existing is not None and existing.source_run_id == run_id:
            return existing.model_id
    with tempfile.TemporaryDirectory(prefix="recon-model-") as tmp:
        encoder = export_checkpoint(checkpoint, Path(tmp) / "encoder")
        config = json.loads((encoder / "config.json").read_text())
        with _tracking(tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name=name, python_model=str(CODE_FILE), artifacts={"encoder": str(encoder)},
                                           input_example=_example(config["recon_relation"]),
                                           pip_requirements=_requirements(), step=step, tags=tags,
                                           model_type=MODEL_TYPE)
    return info.model_id


def link_model_input(client, run_id: str, model_id: str) -> None:
    """Record ``model_id`` as an input of the run (the fine-tuning trial started from it)."""
    from mlflow.entities import LoggedModelInput

    client.log_inputs(run_id, models=[LoggedModelInput(model_id)])


__all__ = ["MODEL_TYPE", "STAGE_HASH_TAG", "DIGEST_TAG", "log_encoder_model", "find_encoder_model",
           "link_model_input"]
