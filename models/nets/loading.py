"""Loading an encoder: ``load_encoder("minilm")`` (an alias), a Hugging Face name available offline, a local
directory, or a recon checkpoint.

Usage::

    bundle = load_encoder("minilm")                 # or "bert-base-uncased", a local dir, a recon checkpoint
    rep = bundle.model(input_ids, attention_mask, head_pos, tail_pos)   # [B, 2 * hidden]

``load_encoder`` is the one place where markers, blanks and type tokens are wired into a vocabulary
(``SpecialTokens.for_tokenizer``) and the embedding matrix is resized when tokens had to be added,
so fine-tuning, few-shot and pre-training all see the same token ids for the same encoder.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recon.core.defaults import ENCODER_ALIASES
from recon.core.errors import ReconError
from recon.data_prep.special_tokens import SpecialTokens
from recon.models.nets.checkpoint import load_checkpoint
from recon.models.nets.encoder import RECON_MANIFEST, EncoderBundle, RelationEncoder, bare_backbone, split_mlm_model, tie_mlm_decoder

log = logging.getLogger(__name__)


def _hub_allowed() -> bool:
    """Whether a name may be fetched from the Hugging Face hub (never when HF_HUB_OFFLINE is set)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on")


def _resolve(name_or_path: str) -> tuple[str, list[str]]:
    """Alias -> directory; returns (what to load, human-readable list of what was tried)."""
    tried = []
    if name_or_path in ENCODER_ALIASES:
        target = ENCODER_ALIASES[name_or_path]
        tried.append(f"alias {name_or_path!r} -> {target}")
        return target, tried
    return name_or_path, tried


def _looks_like_path(target: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with separators is a filesystem path."""
    return target.startswith((".", "/", "~")) or target.count("/") > 1 or os.sep != "/" and os.sep in target


def _from_pretrained(loader, target: str, tried: list[str], what: str, **kwargs):
    """Load from a local dir, else the local HF cache, else the hub when allowed (never when offline)."""
    if os.path.isdir(target):
        return loader.from_pretrained(target, **kwargs)
    if _looks_like_path(target):
        if not any(target in t for t in tried):
            tried.append(f"local directory {target} (does not exist)")
        raise OSError(f"{target} is not a directory")
    try:
        return loader.from_pretrained(target, local_files_only=True, **kwargs)
    except OSError:
        tried.append(f"Hugging Face cache for {target!r} ({what} not cached)")
        if not _hub_allowed():
            raise
    tried.append(f"Hugging Face hub download of {target!r}")
    return loader.from_pretrained(target, **kwargs)


def encoder_problem(name_or_path: str, hub_timeout_s: float = 8.0) -> str | None:
    """Why ``load_encoder(name_or_path)`` would fail here, found without loading it (None: it would load).

    An alias needs its package installed; a folder must hold a Hugging Face model (``config.json``) or a recon
    checkpoint (``recon.json``); a hub name must be in the local cache, or the hub must answer (a few seconds'
    check) and not be switched off with ``HF_HUB_OFFLINE``.
    """
    target, _ = _resolve(str(name_or_path))
    expanded = os.path.expanduser(target)
    if name_or_path in ENCODER_ALIASES and not os.path.isdir(expanded):
        return f"the alias {name_or_path!r} needs its package ({expanded})"
    if os.path.isdir(expanded):
        if not any(os.path.isfile(os.path.join(expanded, f)) for f in (RECON_MANIFEST, "config.json")):
            return f"{expanded} holds neither a Hugging Face model (config.json) nor a recon checkpoint ({RECON_MANIFEST})"
        return None
    if _looks_like_path(target) or os.path.lexists(expanded):
        return f"{expanded} is not a folder" if os.path.lexists(expanded) else f"{expanded} does not exist"
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(target, "config.json"), str):
        return None
    if not _hub_allowed():
        return f"{target!r} is not in the Hugging Face cache and HF_HUB_OFFLINE forbids downloading it"
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(target, timeout=hub_timeout_s)
    except Exception as exc:  # noqa: BLE001 - unreachable, unknown or private: the run would fail the same way
        return (f"{target!r} is not in the Hugging Face cache and cannot be downloaded here "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})")
    return None


def _load_model(auto_cls, target: str, tried: list[str]):
    """``from_pretrained`` with SDPA attention where the architecture supports it."""
    try:
        return _from_pretrained(auto_cls, target, tried, "model", attn_implementation="sdpa",
                                output_loading_info=True)
    except (ValueError, ImportError) as err:  # architectures without SDPA support
        if "sdpa" not in str(err).lower():
            raise
        return _from_pretrained(auto_cls, target, tried, "model", output_loading_info=True)


def _load_parts(name_or_path: str, expanded: str, tried: list[str], mlm_head: bool):
    """Tokenizer (with the marker tokens wired in), the model as ``from_pretrained`` left it, its
    load info and the special tokens: everything of :func:`load_encoder` before the resize."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    try:
        tokenizer = _from_pretrained(AutoTokenizer, expanded, tried, "tokenizer")
        if mlm_head:
            model, info = _load_model(AutoModelForMaskedLM, expanded, tried)
        else:
            model, info = _load_model(AutoModel, expanded, tried)
    except OSError as err:
        attempts = "; ".join(tried) or f"{expanded!r} as a local directory or Hugging Face id"
        raise ReconError(
            f"cannot load encoder {name_or_path!r}: tried {attempts}. Known aliases: "
            f"{', '.join(sorted(ENCODER_ALIASES))}; a recon checkpoint directory must contain "
            f"{RECON_MANIFEST}. ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None

    # The pooler is dropped below, so a missing pooler is not a newly initialised weight.
    newly = tuple(sorted(k for k in info.get("missing_keys", ()) or () if ".pooler." not in f".{k}"))
    if newly:
        log.info("encoder %s: newly initialised weights (not in the checkpoint): %s", name_or_path,
                 ", ".join(newly))
    special = SpecialTokens.for_tokenizer(tokenizer)
    return tokenizer, model, special, newly


def _assemble(name_or_path: str, model: nn.Module, tokenizer, special: SpecialTokens, newly: tuple[str, ...],
              mlm_head: bool) -> EncoderBundle:
    """Resize for added tokens (seeded draws: transformers' mean_resizing), tie, split: the bundle."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # Resize the full model before splitting so a tied MLM decoder and its bias grow with it.
        model.resize_token_embeddings(len(tokenizer))
        log.info("encoder %s: added %d marker/type tokens, embeddings resized to %d", name_or_path,
                 len(special.added), len(tokenizer))
    if mlm_head:
        model.tie_weights()
        backbone, head = split_mlm_model(model)
    else:
        backbone, head = bare_backbone(model), None
    encoder = RelationEncoder(backbone, head)
    tie_mlm_decoder(encoder)
    return EncoderBundle(encoder, tokenizer, special, source=str(name_or_path), newly_initialized=newly)


def load_encoder(name_or_path: str = "minilm", *, mlm_head: bool | None = False, cache: bool = False
                 ) -> EncoderBundle:
    """Load tokenizer + backbone (+ MLM head), wire the marker tokens and resize embeddings if needed.

    ``name_or_path`` is an alias (``minilm``), a Hugging Face id available offline, a local
    ``save_pretrained`` directory, or a recon checkpoint directory (recognised by ``recon.json``).
    ``mlm_head``: ``True`` loads or initialises one, ``False`` leaves it out (fine-tuning: DDP rejects
    unused parameters), ``None`` restores a recon checkpoint exactly as saved.

    ``cache=True`` keeps what was read from disk in this process (:func:`cached_parts`): later
    calls get the same bundle as an uncached load would give them -- a fresh model built from a
    copy of the loaded weights, never weights a previous caller trained -- without reading the
    files again; the tokenizer object is shared (it is only read).
    """
    target, tried = _resolve(str(name_or_path))
    expanded = os.path.expanduser(target)
    if cache:
        return _cached_load(str(name_or_path), expanded, tried, mlm_head)
    if os.path.isfile(os.path.join(expanded, RECON_MANIFEST)):
        return load_checkpoint(expanded, mlm_head=mlm_head)
    mlm_head = bool(mlm_head)
    tokenizer, model, special, newly = _load_parts(str(name_or_path), expanded, tried, mlm_head)
    return _assemble(str(name_or_path), model, tokenizer, special, newly, mlm_head)


# ---------------------------------------------------------------- per-process cache of loaded encoders

@dataclass
class _Loaded:
    """What one load read from disk, kept pristine: never handed out, only copied."""

    kind: str                 # "hf": model before the resize; "checkpoint": the finished encoder
    model: nn.Module
    tokenizer: Any
    special: SpecialTokens
    newly: tuple[str, ...]


_LOADED: "OrderedDict[tuple, _Loaded]" = OrderedDict()
_LOADED_SIZE = 2  # encoders kept per process (MiniLM ~90 MB, BERT-base ~440 MB of CPU memory each)


def source_fingerprint(path: str) -> tuple | None:
    """``(path, ((file, size, mtime_ns), ...))`` of a local encoder directory; None for anything else.

    A directory rewritten in place (a re-run pre-training stage, a re-saved model) changes size or
    mtime of its files, so it is read again.
    """
    if not os.path.isdir(path):
        return None
    root = os.path.realpath(path)
    files = []
    for base, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(base, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            files.append((os.path.relpath(full, root), st.st_size, st.st_mtime_ns))
    return root, tuple(files)


def clear_encoder_cache() -> None:
    """Forget every cached encoder of this process (tests; freeing memory)."""
    _LOADED.clear()


def _cached_load(name: str, expanded: str, tried: list[str], mlm_head: bool | None) -> EncoderBundle:
    import copy

    fingerprint = source_fingerprint(expanded)
    is_checkpoint = os.path.isfile(os.path.join(expanded, RECON_MANIFEST))
    head = mlm_head if is_checkpoint else bool(mlm_head)
    key = (fingerprint, head) if fingerprint is not None else None
    entry = _LOADED.get(key) if key is not None else None
    if entry is not None:
        _LOADED.move_to_end(key)
        model = copy.deepcopy(entry.model)
        if entry.kind == "checkpoint":
            return EncoderBundle(model, entry.tokenizer, entry.special, source=expanded, newly_initialized=entry.newly)
        return _assemble(name, model, entry.tokenizer, entry.special, entry.newly, bool(head))
    if is_checkpoint:
        bundle = load_checkpoint(expanded, mlm_head=mlm_head)
        # Every weight came from the file unless a head was initialised here (seeded draws): only
        # then would a copy differ from a fresh load.
        if key is not None and not bundle.newly_initialized:
            _remember(key, _Loaded("checkpoint", copy.deepcopy(bundle.model), bundle.tokenizer, bundle.special, ()))
        return bundle
    rng = torch.get_rng_state()
    tokenizer, model, special, newly = _load_parts(name, expanded, tried, bool(head))
    # A copy stands for a fresh load when the loaded weights did not come from the random generator
    # (no newly initialised weights) and, when the resize draws rows for added tokens, loading left
    # the generator where the resize expects it (the caller seeded it just before).
    resize = len(tokenizer) > model.get_input_embeddings().num_embeddings
    if key is not None and not newly and (not resize or torch.equal(rng, torch.get_rng_state())):
        _remember(key, _Loaded("hf", copy.deepcopy(model), tokenizer, special, newly))
    return _assemble(name, model, tokenizer, special, newly, bool(head))


def _remember(key: tuple, entry: _Loaded) -> None:
    _LOADED[key] = entry
    while len(_LOADED) > _LOADED_SIZE:
        _LOADED.popitem(last=False)


__all__ = ["load_encoder", "encoder_problem", "clear_encoder_cache", "source_fingerprint", "ENCODER_ALIASES"]
