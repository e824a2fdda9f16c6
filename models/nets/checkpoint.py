"""Encoder checkpoints as plain files: safetensors weights + JSON config/tokenizer + ``recon.json``.

A checkpoint directory holds

- ``model.safetensors``: the ``RelationEncoder`` state (``backbone.*``, ``mlm_head.*``), each tied
  tensor stored once; ``recon.json`` lists which names alias which stored tensor;
- ``config.json``: the backbone's Hugging Face config (vocabulary size already resized);
- the tokenizer files (``tokenizer.save_pretrained``: JSON and text only);
- ``recon.json``: format version, base encoder, objective, step, marker tokens, MLM head, extra.

Loading reads only JSON and safetensors, never pickle (``torch.load``), so a checkpoint fetched
from elsewhere cannot run code. Writes go to a temporary sibling directory that is renamed into
place, so a crash mid-save never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from recon.core.atomic import publish_dir
from recon.core.errors import ReconError, read_json_object
from recon.data_prep.special_tokens import SpecialTokens

from recon.models.nets.encoder import RECON_MANIFEST, EncoderBundle, RelationEncoder, split_mlm_model, tie_mlm_decoder

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
REQUIRED_FILES = (RECON_MANIFEST, WEIGHTS, "config.json", "tokenizer_config.json")


class CheckpointWriteError(ReconError, OSError):
    """A checkpoint could not be written (disk full, permissions); the previous one is unchanged."""


def _dedup_state(encoder: RelationEncoder) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with each shared tensor stored once (backbone names win) + alias -> stored name."""
    state = encoder.state_dict()
    order = sorted(state, key=lambda n: (not n.startswith("backbone."), n))
    kept: dict[tuple, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name in order:
        t = state[name]
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in kept:
            aliases[name] = kept[key]
            continue
        kept[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def _special_to_json(special: SpecialTokens) -> dict[str, Any]:
    return {
        "head_start": special.head_start, "head_end": special.head_end,
        "tail_start": special.tail_start, "tail_end": special.tail_end,
        "head_blank": special.head_blank, "tail_blank": special.tail_blank,
        "types": dict(special.types), "added": list(special.added),
    }


def _special_from_json(data: dict[str, Any]) -> SpecialTokens:
    return SpecialTokens(
        data["head_start"], data["head_end"], data["tail_start"], data["tail_end"],
        data["head_blank"], data["tail_blank"], dict(data["types"]), tuple(data.get("added", ())),
    )


def save_checkpoint(
    dir: str | os.PathLike,
    encoder: RelationEncoder,
    tokenizer,
    *,
    extra: dict | None = None,
    special: SpecialTokens | None = None,
    base_encoder: str | None = None,
    objective: str | None = None,
    step: int | None = None,
) -> Path:
    """Write a checkpoint to ``dir`` atomically (replacing an existing one) and return its path.

    ``special`` defaults to ``SpecialTokens.for_vocab(tokenizer.get_vocab())``, which gives the same
    tokens ``load_encoder`` chose. ``base_encoder``, ``objective`` and ``step`` may also be given in
    ``extra`` (keys of the same name); explicit arguments win.
    """
    extra = dict(extra or {})
    target = Path(dir).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    if special is None:
        special = SpecialTokens.for_vocab(tokenizer.get_vocab())
    tensors, aliases = _dedup_state(encoder)
    manifest = {
        "format_version": FORMAT_VERSION,
        "base_encoder": base_encoder if base_encoder is not None else extra.get("base_encoder"),
        "objective": objective if objective is not None else extra.get("objective"),
        "step": step if step is not None else extra.get("step"),
        "special_tokens": _special_to_json(special),
        "has_mlm_head": encoder.has_mlm_head,
        "tied_weights": aliases,
        "backbone_class": type(encoder.backbone).__name__,
        "extra": extra,
    }
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "recon_format": str(FORMAT_VERSION)})
        encoder.backbone.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECON_MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        publish_dir(tmp, target)
    except Exception as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, ReconError):
            raise
        # safetensors reports a full disk as SafetensorError("I/O error: No space left on device"):
        # name the checkpoint, and say that what was there before is intact.
        previous = "the previous checkpoint there is unchanged" if target.exists() else "nothing was written"
        raise CheckpointWriteError(f"could not write checkpoint {target}: {type(err).__name__}: {err} "
                                   f"({previous})") from err
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_manifest(dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``recon.json`` of a checkpoint directory (error names the file when unreadable)."""
    path = Path(dir) / RECON_MANIFEST
    if not Path(dir).is_dir():
        raise ReconError(f"{dir} is not a recon checkpoint: no such directory")
    try:
        manifest = read_json_object(path, "the checkpoint's manifest")
    except FileNotFoundError:
        pickles = sorted(p.name for p in Path(dir).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        hint = (f" (it holds pickled weights {', '.join(pickles[:3])}, which recon never loads)" if pickles else "")
        raise ReconError(f"{dir} is not a recon checkpoint: {RECON_MANIFEST} is missing{hint}") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ReconError(f"{path}: field 'format_version' is {version!r}; this recon reads {FORMAT_VERSION}")
    special = manifest.get("special_tokens")
    keys = ("head_start", "head_end", "tail_start", "tail_end", "head_blank", "tail_blank", "types")
    if not isinstance(special, dict) or any(k not in special for k in keys):
        missing = [k for k in keys if not isinstance(special, dict) or k not in special]
        raise ReconError(f"{path}: field 'special_tokens' is missing or incomplete (no {', '.join(missing)})")
    if not isinstance(manifest.get("tied_weights", {}), dict):
        raise ReconError(f"{path}: field 'tied_weights' must be a JSON object")
    return manifest


def check_files(dir: str | os.PathLike) -> Path:
    """The checkpoint's resolved root, after checking that its files are all there and stay inside it.

    A symlink that points outside the checkpoint directory (``config.json -> /etc/passwd``, weights
    from another checkpoint) is refused: a checkpoint fetched from elsewhere must be self-contained.
    """
    root = Path(dir).expanduser()
    real = root.resolve()
    for entry in sorted(root.rglob("*")):
        if entry.is_symlink():
            target = entry.resolve()
            if target != real and real not in target.parents:
                raise ReconError(f"checkpoint {root}: {entry.relative_to(root)} is a symlink to {target}, "
                                 "outside the checkpoint directory; copy the file in instead")
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            if name == WEIGHTS:
                raise ReconError(f"checkpoint {root} has no {WEIGHTS}; it is incomplete or not a recon checkpoint "
                                 "(recon never loads pickled *.bin/*.pt weights)")
            raise ReconError(f"checkpoint {root} has no {name}; it is incomplete (a checkpoint holds "
                             f"{', '.join(REQUIRED_FILES)})")
    return root


def load_checkpoint(dir: str | os.PathLike, *, mlm_head: bool | None = None) -> EncoderBundle:
    """Rebuild the encoder from JSON + safetensors only.

    ``mlm_head=None`` restores the head exactly when the checkpoint has one; ``True`` adds a fresh,
    tied head to a checkpoint saved without one (e.g. MLM continued from a fine-tuned encoder);
    ``False`` drops a saved head.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    root = Path(dir).expanduser()
    manifest = read_manifest(root)
    check_files(root)
    weights = root / WEIGHTS
    saved_head = bool(manifest.get("has_mlm_head"))
    want_head = saved_head if mlm_head is None else bool(mlm_head)

    try:
        config = AutoConfig.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ReconError(f"checkpoint {root}: unreadable {root / 'config.json'}: {err}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ReconError(f"checkpoint {root}: unreadable tokenizer files: {err}") from None
    special = _special_from_json(manifest["special_tokens"])
    tokenizer.add_tokens(special.all_tokens(), special_tokens=True)  # keep markers atomic (no-op ids)
    if want_head:
        backbone, head = split_mlm_model(_from_config(AutoModelForMaskedLM, config))
    else:
        backbone, head = _from_config(AutoModel, config), None
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None
    encoder = RelationEncoder(backbone, head)
    tie_mlm_decoder(encoder)

    try:
        state = load_file(str(weights), device="cpu")
    except Exception as err:  # SafetensorError: truncated, not safetensors at all, bad header
        raise ReconError(f"{weights}: not a readable safetensors file ({err}); the checkpoint is damaged "
                         "or incomplete") from None
    for alias, stored in manifest.get("tied_weights", {}).items():
        if stored in state:
            state[alias] = state[stored]
    if not want_head:
        state = {k: v for k, v in state.items() if not k.startswith("mlm_head.")}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    live = encoder.state_dict(keep_vars=True)
    loaded_ptrs = {live[k].data_ptr() for k in state if k in live}
    missing = [k for k in missing if live[k].data_ptr() not in loaded_ptrs]  # tied to a loaded tensor
    newly = tuple(k for k in missing if k.startswith("mlm_head.") and not saved_head)
    bad_missing = [k for k in missing if k not in newly]
    if bad_missing or unexpected:
        raise ReconError(
            f"{weights} does not match {root / 'config.json'}: missing {bad_missing[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )
    if newly:
        log.info("checkpoint %s: MLM head newly initialised: %s", root, ", ".join(newly))
    if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
        raise ReconError(f"checkpoint {root}: tokenizer has {len(tokenizer)} tokens but the embedding matrix "
                         f"only {backbone.get_input_embeddings().num_embeddings} rows")
    return EncoderBundle(encoder, tokenizer, replace(special, added=()),
                         source=str(root), newly_initialized=newly)


def _from_config(auto_cls, config):
    """Instantiate an architecture without weights files, with SDPA attention where supported."""
    try:
        return auto_cls.from_config(config, attn_implementation="sdpa")
    except (ValueError, ImportError):
        return auto_cls.from_config(config)
