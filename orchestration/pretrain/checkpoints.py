"""Finding pre-training checkpoints in the storage location (a local path, NFS or an object store).

A run's storage folder holds Ray Train's ``checkpoint_step_NNNNNN/`` folders: the encoder (via
``recon.models.nets.checkpoint.save_checkpoint``) plus ``train/`` with the optimizer tensors as
safetensors and the scheduler / sampler / RNG state as JSON. A checkpoint counts only when every
file of that layout is there, so a copy interrupted mid-way is never resumed from.
"""
from __future__ import annotations

from typing import Optional

from recon.core.storage import Storage

CHECKPOINT_PREFIX = "checkpoint_step_"
TRAIN_STATE_DIR = "train"
REQUIRED_FILES = ("recon.json", "model.safetensors", f"{TRAIN_STATE_DIR}/optimizer.safetensors",
                  f"{TRAIN_STATE_DIR}/train_state.json")


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def step_of(name: str) -> Optional[int]:
    """The step of a ``checkpoint_step_NNNNNN`` name, None for anything else."""
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    try:
        return int(name[len(CHECKPOINT_PREFIX):])
    except ValueError:
        return None


def complete_checkpoints(storage: Storage, run: str = "") -> dict[int, str]:
    """Step -> relative path of every complete checkpoint under ``run`` in ``storage``."""
    files = storage.list(run) if storage.exists(run) else []
    prefix = f"{run.rstrip('/')}/" if run else ""
    by_dir: dict[str, set[str]] = {}
    for rel in files:
        inner = rel[len(prefix):] if rel.startswith(prefix) else rel
        head, _, rest = inner.partition("/")
        if rest:
            by_dir.setdefault(head, set()).add(rest)
    found = {}
    for name, contents in by_dir.items():
        step = step_of(name)
        if step is not None and all(f in contents for f in REQUIRED_FILES):
            found[step] = f"{prefix}{name}"
    return found


def latest_checkpoint(storage: Storage, run: str = "") -> Optional[str]:
    """Relative path of the complete checkpoint with the highest step (None when there is none)."""
    found = complete_checkpoints(storage, run)
    return found[max(found)] if found else None


__all__ = ["CHECKPOINT_PREFIX", "TRAIN_STATE_DIR", "checkpoint_name", "step_of", "complete_checkpoints",
           "latest_checkpoint"]
