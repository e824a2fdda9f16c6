"""Trial trainers: what one Tune trial runs, given its resolved config (Ray-free, testable alone).

A trainer is ``(request, callbacks) -> dict``: the default ones call the one training loop through
``recon.models.train.finetune.run_finetune`` / ``recon.models.train.fewshot.run_fewshot``; a study's ``trainer``
field names another (``module:function`` or ``file.py:function``, whose source the driver ships with
the trial so that a worker node needs no copy of the study folder).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from recon.core.errors import ReconError
from recon.core.hashing import stable_hash
from recon.models.train.finetune_config import CHECKPOINT_PREFIX
from recon.models.train.weights import WEIGHTS_FILE

from recon.orchestration.study.trial import Trial


@dataclass
class TrialRequest:
    """What a trainer gets: the trial, its config with this node's locations filled in, and its folder.

    ``config`` is ``trial.runner_config()`` (the very config the trial id hashes) with the
    references resolved here: ``@pretrain.<stage>`` -> the stage's checkpoint directory, the data
    directory -> the driver's, resolved to an absolute path.
    """

    trial: Trial
    out_dir: Path
    config: Any = None
    data_dir: Optional[str] = None


Trainer = Callable[[TrialRequest, Sequence[Any]], dict]


def resolve_references(trial: Trial, checkpoints: dict[str, str], data_dir: Optional[str]) -> Any:
    """The trial's runner config with ``@pretrain.<stage>`` and the data directory resolved."""
    cfg = trial.runner_config()
    if trial.kind == "finetune":
        model = checkpoints.get(cfg.model, cfg.model)
        if model.startswith(CHECKPOINT_PREFIX):
            raise ReconError(f"trial {trial.trial_id}: {model} has no checkpoint (its stage did not run)")
        return cfg.replace(model=model, encoder=checkpoints.get(cfg.encoder, cfg.encoder),
                           data=cfg.data.replace(data_dir=data_dir), training=cfg.training.replace(progress=False))
    encoder = checkpoints.get(cfg.encoder, cfg.encoder)
    if encoder.startswith(CHECKPOINT_PREFIX):
        raise ReconError(f"trial {trial.trial_id}: {encoder} has no checkpoint (its stage did not run)")
    training = cfg.settings.training.replace(progress=False)
    return cfg.replace(encoder=encoder, data_dir=data_dir, settings=cfg.settings.replace(training=training))


# ---------------------------------------------------------------- trainers

def finetune_trial(request: TrialRequest, callbacks: Sequence[Any]) -> dict:
    """Default supervised trainer: ``recon.models.train.finetune.run_finetune`` on the request's config."""
    from recon.models.train.finetune import run_finetune

    return run_finetune(request.config, callbacks=callbacks, out_dir=request.out_dir)


def fewshot_trial(request: TrialRequest, callbacks: Sequence[Any]) -> dict:
    """Default few-shot trainer: ``recon.models.train.fewshot.run_fewshot`` (its ``notes`` say what it trained on)."""
    from recon.models.train.fewshot import run_fewshot

    return run_fewshot(request.config, callbacks=callbacks, out_dir=request.out_dir)


def finetune_evaluate(request: TrialRequest) -> dict:
    """Default evaluation of kept weights (``recon.models.train.finetune.evaluate_kept``): ``request.out_dir``
    holds the trial's stored files (``result.json`` naming its weights, the weights, ``predictions.jsonl``), ``request.config.eval_views`` the views
    to add; the stored predictions are checked against the ones the weights give again."""
    import json

    from recon.models.train.finetune import evaluate_kept

    kept = json.loads((request.out_dir / "result.json").read_text(encoding="utf-8")).get("weights") or {}
    weights = request.out_dir / str(kept.get("file") or WEIGHTS_FILE)
    stored = [json.loads(line) for line in (request.out_dir / "predictions.jsonl").read_text(encoding="utf-8")
              .splitlines() if line.strip()]
    return evaluate_kept(request.config, weights, stored)


Evaluator = Callable[[TrialRequest], dict]
EVALUATOR_NAME = "evaluate_kept"  # what a custom trainer's module defines to score its kept weights on views


def load_evaluator(source: Optional[dict], kind: str) -> Optional[Evaluator]:
    """What scores a finished trial's kept weights on test views: the default for supervised trials, a custom
    trainer module's ``evaluate_kept`` function, or None (few-shot trials, a custom trainer without one)."""
    if kind != "finetune":
        return None
    if not source:
        return finetune_evaluate
    trainer = load_trainer(source, kind)
    return getattr(sys.modules.get(trainer.__module__), EVALUATOR_NAME, None)


def trainer_source(name: Optional[str], base_dir: Optional[Path] = None) -> Optional[dict]:
    """What a worker needs to load the spec's ``trainer``: a module name, or a file's source code."""
    if not name:
        return None
    target, _, func = name.rpartition(":")
    if not target or not func:
        raise ReconError(f"trainer {name!r} must look like 'module:function' or 'file.py:function'")
    if not target.endswith(".py"):
        return {"name": name, "module": target, "function": func}
    path = Path(target)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ReconError(f"trainer file {path} not found")
    return {"name": name, "file": path.name, "code": path.read_text(encoding="utf-8"), "function": func}


def load_trainer(source: Optional[dict], kind: str) -> Trainer:
    """The trainer a trial runs: the default for its kind, or the shipped one (module or source code)."""
    if not source:
        return finetune_trial if kind == "finetune" else fewshot_trial
    if "module" in source:
        module = importlib.import_module(source["module"])
    else:
        module_name = f"recon_trainer_{stable_hash(source['code'])}"
        module = sys.modules.get(module_name)
        if module is None:
            module = types.ModuleType(module_name)
            module.__file__ = source["file"]
            sys.modules[module_name] = module
            exec(compile(source["code"], source["file"], "exec"), module.__dict__)
    try:
        return getattr(module, source["function"])
    except AttributeError:
        raise ReconError(f"trainer {source['name']!r}: no function {source['function']!r}") from None


def resolve_trainer(name: Optional[str], kind: str, base_dir: Optional[Path] = None) -> Trainer:
    """The spec's ``trainer`` ("package.module:function" or "path/file.py:function"), else the default."""
    return load_trainer(trainer_source(name, base_dir), kind)




__all__ = ["TrialRequest", "Trainer", "Evaluator", "finetune_evaluate", "load_evaluator", "EVALUATOR_NAME", "resolve_references", "finetune_trial", "fewshot_trial", "trainer_source",
           "load_trainer", "resolve_trainer"]
