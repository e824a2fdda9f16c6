"""A trained model's weights kept beside its results, so later test views score them without training again.

    from recon.models.train.weights import save_weights, load_weights, WEIGHTS_FILE
    info = save_weights(model, out_dir)      # out_dir / "weights.safetensors"; {"file", "bytes", "tensors"}
    load_weights(rebuilt_model, out_dir / WEIGHTS_FILE)

What is kept is the whole fine-tuned model's ``state_dict`` in its own dtypes (float32 as trained; the bf16
autocast never touches the stored parameters), as safetensors: a rebuilt model loaded from it predicts
exactly what the trained one did, which a cast to half precision would not promise. MiniLM's classifier is
about 90 MB per trial. ``safetensors.torch.save_model`` keeps one copy of tied tensors (BERT's word
embeddings and its MLM decoder, where a head has one), and ``load_model`` refuses missing or unexpected keys.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "weights.safetensors"


def save_weights(model: Any, folder: str | os.PathLike) -> dict:
    """Write ``model``'s state to ``folder/weights.safetensors`` (through a temporary name, so a file under
    that name is whole); returns what a result records: the file name, its size in bytes, its tensor count."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / WEIGHTS_FILE
    partial = folder / f".{WEIGHTS_FILE}.partial"
    save_model(model, str(partial))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)  # readable like the trial's other files (the writer creates it 0600)
    os.replace(partial, target)
    return {"file": WEIGHTS_FILE, "bytes": target.stat().st_size, "tensors": len(model.state_dict())}


def load_weights(model: Any, path: str | os.PathLike) -> Any:
    """Load kept weights into a model rebuilt from the same config (strict: every key, every shape)."""
    from safetensors.torch import load_model

    load_model(model, str(path), strict=True)
    return model


__all__ = ["save_weights", "load_weights", "WEIGHTS_FILE"]
