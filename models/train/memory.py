"""How much accelerator memory one fine-tuning trial needs, estimated before it runs.

Why: ``ray: {gpus_per_trial: 0.25}`` packs four trials on one GPU, but Ray only counts the fraction; it
does not know whether four trials fit in the GPU's memory. A trial that does not fit fails with an
out-of-memory error minutes into the study, after its neighbours started. This estimate lets preflight
compare what a trial needs with its share of the GPU first (``recon.orchestration.study.preflight``).

The estimate, per trial (``training_memory_bytes``):

* parameters, their gradients and AdamW's two moments, all kept in fp32 (autocast computes in bf16 but
  keeps fp32 weights): ``16 bytes x parameters``;
* activations kept for the backward pass of a transformer layer, per Korthikanti et al. (2022, "Reducing
  Activation Recomputation in Large Transformer Models", eq. 2, no recomputation): ``s*b*h*(34 + 5*a*s/h)``
  bytes with 16-bit activations, twice that in fp32, times the number of layers (s: sequence length,
  b: batch, h: hidden size, a: attention heads);
* a fixed allowance for the CUDA context, cuBLAS workspaces and the allocator's fragmentation
  (:data:`RUNTIME_OVERHEAD_BYTES`), which every process on the GPU pays once.

It is an estimate: preflight refuses only when the estimate exceeds the trial's share, and says by
how much, so a user can change the fraction, the batch or the length with the figures in hand.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional

BYTES_PER_PARAMETER = 16          # fp32 weight + fp32 gradient + AdamW's exp_avg and exp_avg_sq
RUNTIME_OVERHEAD_BYTES = 1 << 30  # CUDA context (~0.3-0.5 GiB), cuBLAS workspace, allocator slack
GIB = float(1 << 30)


@dataclass(frozen=True)
class EncoderShape:
    """The sizes the estimate reads from an encoder's Hugging Face config."""

    parameters: int
    hidden: int
    layers: int
    heads: int
    source: str  # where the figures came from, said in the estimate's text

    @classmethod
    def from_config(cls, config, source: str) -> "EncoderShape":
        h, layers = config.hidden_size, config.num_hidden_layers
        ff = getattr(config, "intermediate_size", 4 * h)
        embeddings = (config.vocab_size + getattr(config, "max_position_embeddings", 512)
                      + getattr(config, "type_vocab_size", 2)) * h + 2 * h
        per_layer = 4 * h * h + 4 * h + 2 * h * ff + ff + h + 4 * h  # attention, feed-forward, two LayerNorms
        return cls(embeddings + layers * per_layer, h, layers, config.num_attention_heads, source)


# BERT-base's sizes (``EncoderShape.from_config(BertConfig())``, checked by a test): the figures used when an
# encoder's config cannot be read on this machine (a hub name not cached here; the cluster's nodes may have it).
BERT_BASE = EncoderShape(108_891_648, 768, 12, 12, "BERT-base's sizes (the encoder's config is not readable here)")


@functools.lru_cache(maxsize=32)
def encoder_shape(name_or_path: str) -> EncoderShape:
    """The encoder's sizes from its ``config.json`` (an alias, a folder, a recon checkpoint or a cached hub
    name); BERT-base's when the config cannot be read here."""
    from transformers import AutoConfig

    from recon.models.nets.loading import _from_pretrained, _resolve

    target, tried = _resolve(str(name_or_path))
    try:
        config = _from_pretrained(AutoConfig, os.path.expanduser(target), tried, "config")
    except (OSError, ValueError):
        return BERT_BASE
    return EncoderShape.from_config(config, f"{name_or_path}'s config")


def activation_bytes(shape: EncoderShape, batch_size: int, max_length: int, bf16: bool) -> int:
    """Activations saved for the backward pass (Korthikanti et al. 2022, eq. 2), all layers."""
    s, b, h, a = max_length, batch_size, shape.hidden, shape.heads
    per_layer_16bit = s * b * h * (34 + 5 * a * s / h)
    return int(shape.layers * per_layer_16bit * (1 if bf16 else 2))


def training_memory_bytes(shape: EncoderShape, batch_size: int, max_length: int, bf16: bool) -> int:
    """Peak memory of one fine-tuning process: states, activations and the runtime's own allowance."""
    return (BYTES_PER_PARAMETER * shape.parameters + activation_bytes(shape, batch_size, max_length, bf16)
            + RUNTIME_OVERHEAD_BYTES)


def packing_problem(need_bytes: int, gpu_bytes: int, fraction: float, what: str) -> Optional[str]:
    """Why trials asking for ``fraction`` of a ``gpu_bytes`` GPU would not fit (None: they fit).

    ``fraction`` of 1 or more is a whole GPU (or several; a trial uses one device). The text carries the
    figures a user needs to choose again: the estimate, the share, and the largest fraction that fits.
    """
    share = gpu_bytes * min(fraction, 1.0)
    if need_bytes <= share:
        return None
    per_gpu = int(gpu_bytes // need_bytes)
    fits = (f"at most {per_gpu} such trials fit on one GPU (gpus_per_trial: {1 / per_gpu:g} or more)"
            if per_gpu >= 1 else "not even one such trial fits on one GPU")
    return (f"{what} needs about {need_bytes / GIB:.1f} GiB of GPU memory (estimated), and gpus_per_trial "
            f"{fraction:g} of a {gpu_bytes / GIB:.0f} GiB GPU gives it {share / GIB:.1f} GiB: {fits}")


def finetune_length(cfg) -> int:
    """Word pieces per input of a fine-tuning run: its ``data.max_length``, else its dataset's."""
    from recon.data_prep.registry import SUPERVISED_LENGTH, get_spec

    return cfg.data.max_length or (get_spec(cfg.dataset).max_length if cfg.dataset else SUPERVISED_LENGTH)


def finetune_memory_bytes(cfg) -> tuple[int, EncoderShape]:
    """The estimate for one fine-tuning run of ``cfg`` (a ``FinetuneConfig``), with the sizes it used.

    The encoder is the run's ``model`` when that is a checkpoint folder, else its ``encoder``; a checkpoint
    that a pre-training stage has still to write (``@pretrain.cp``) has its base encoder's sizes, which the
    study gives as ``encoder``. The length is the run's ``data.max_length``, else the dataset's.
    """
    length = finetune_length(cfg)
    checkpoint = cfg.model not in ("bert", "cnn") and not str(cfg.model).startswith("@")
    shape = encoder_shape(cfg.model if checkpoint else cfg.encoder)
    return training_memory_bytes(shape, cfg.training.batch_size, length, cfg.training.bf16), shape


def pretrain_memory_bytes(cfg) -> tuple[int, EncoderShape]:
    """The estimate for one pre-training worker of ``cfg`` (a checked ``PretrainConfig``).

    A worker's forward pass holds ``micro_batch_size`` positive pairs, two sentences each; the MLM head's
    transform layer adds its parameters when the MLM loss is on (its decoder is tied to the embeddings; the
    decoder's bias, one value per word piece, is left out).
    """
    shape = encoder_shape(cfg.encoder_name)
    if cfg.mlm_weight > 0:
        extra = shape.hidden * shape.hidden + 3 * shape.hidden  # dense + bias + LayerNorm
        shape = EncoderShape(shape.parameters + extra, shape.hidden, shape.layers, shape.heads, shape.source)
    sentences = 2 * int(cfg.micro_batch_size or 1)
    return training_memory_bytes(shape, sentences, cfg.max_length, cfg.bf16), shape
