"""Training state of a pre-training run on disk, without pickle: tensors in safetensors, the rest in JSON.

    save_train_state(dir, optimizer=opt, scheduler=sched, extra={"step": 120, "samplers": [...]})
    extra = load_train_state(dir, optimizer=opt, scheduler=sched)   # restores both in place

Why not ``torch.save``: a pickle runs code when loaded, so a checkpoint copied from a shared
cluster store would be a code-execution vector, and pickles break across torch versions. The
optimizer's per-parameter tensors (AdamW ``exp_avg``/``exp_avg_sq``/``step``) go to
``optimizer.safetensors`` under ``state.<param index>.<name>``; its param groups (hyper-parameters
and the parameter indices), the scheduler state, the samplers' states, RNG states and the step
counter go to ``train_state.json``. The encoder itself is saved next to them by
``recon.models.nets.checkpoint.save_checkpoint``.
"""
from __future__ import annotations

import base64
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"
FORMAT_VERSION = 1


def _jsonable(value: Any, where: str) -> Any:
    """Check that ``value`` survives a JSON round trip unchanged (tuples become lists)."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return {"__float__": repr(value)}
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored as JSON")


def _unjson(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _unjson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unjson(v) for v in value]
    return value


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into flat tensors and a JSON-able remainder."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = _jsonable(value, f"optimizer.state.{index}.{name}")
    meta = {"param_groups": _jsonable(state["param_groups"], "optimizer.param_groups"), "scalars": scalars}
    return tensors, meta


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of :func:`optimizer_to_flat`; ``load_state_dict`` moves tensors to the params' device."""
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        per_param.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        per_param.setdefault(int(index), {}).update(_unjson(values))
    optimizer.load_state_dict({"state": per_param, "param_groups": _unjson(meta["param_groups"])})


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states, as JSON."""
    np_state = np.random.get_state()
    out = {
        "python": _jsonable(random.getstate(), "rng.python"),
        "numpy": [np_state[0], np_state[1].tolist(), *[_jsonable(v, "rng.numpy") for v in np_state[2:]]],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }
    if torch.cuda.is_available():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in cuda]
        )


def save_train_state(
    directory: str | Path,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict,
) -> Path:
    """Write optimizer tensors (safetensors) and scheduler + ``extra`` (JSON) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, optimizer_meta = optimizer_to_flat(optimizer)
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    payload = {
        "format_version": FORMAT_VERSION,
        "optimizer": optimizer_meta,
        "scheduler": _jsonable(scheduler.state_dict(), "scheduler") if scheduler is not None else None,
        "extra": _jsonable(extra, "extra"),
    }
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=1))
    return directory


def read_train_state(directory: str | Path) -> dict:
    """The JSON part of a saved state (``extra`` and friends) without touching any optimizer."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state here (not a pre-training checkpoint?)")
    payload = json.loads(path.read_text())
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: field 'format_version' is {payload.get('format_version')!r}, "
                         f"expected {FORMAT_VERSION}")
    return payload


def load_train_state(
    directory: str | Path,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> dict:
    """Restore ``optimizer``/``scheduler`` in place from ``directory``; return the ``extra`` dict."""
    directory = Path(directory)
    payload = read_train_state(directory)
    if optimizer is not None:
        optimizer_from_flat(optimizer, load_file(str(directory / OPTIMIZER_FILE)), payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(_unjson(payload["scheduler"]))
    return _unjson(payload["extra"])


__all__ = [
    "save_train_state", "load_train_state", "read_train_state", "rng_state", "set_rng_state",
    "optimizer_to_flat", "optimizer_from_flat", "OPTIMIZER_FILE", "STATE_FILE",
]
