"""Relation encoder: a Hugging Face backbone whose entity START markers give the relation vector.

``RelationEncoder`` is the network (backbone + optional MLM head); loading one by name, directory or
recon checkpoint, with the marker tokens wired in, is ``recon.models.nets.loading.load_encoder``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from recon.core.errors import ReconError
from recon.data_prep.special_tokens import SpecialTokens

RECON_MANIFEST = "recon.json"  # marks a directory written by models.nets.checkpoint.save_checkpoint


class RelationEncoder(nn.Module):
    """Backbone + optional MLM head; the relation representation is [h_head_start ; h_tail_start].

    ``backbone`` is a bare transformer (``AutoModel``, no pooler); ``mlm_head`` maps its sequence
    output to vocabulary logits (``BertOnlyMLMHead`` for BERT) and shares its decoder weight with the
    input embeddings, so pre-training with MLM does not double the embedding parameters.
    """

    def __init__(self, backbone: nn.Module, mlm_head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.mlm_head = mlm_head
        self.hidden_size: int = int(backbone.config.hidden_size)
        self.rep_size: int = 2 * self.hidden_size

    @property
    def config(self):
        return self.backbone.config

    @property
    def has_mlm_head(self) -> bool:
        return self.mlm_head is not None

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        head_pos: torch.Tensor,
        tail_pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(rep [B, 2H], sequence_output [B, L, H])``; MLM callers need both from one pass."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        seq = out.last_hidden_state
        rows = torch.arange(seq.size(0), device=seq.device)
        head = seq[rows, head_pos.to(seq.device)]
        tail = seq[rows, tail_pos.to(seq.device)]
        return torch.cat([head, tail], dim=-1), seq

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        head_pos: torch.Tensor,
        tail_pos: torch.Tensor,
    ) -> torch.Tensor:
        return self.encode(input_ids, attention_mask, head_pos, tail_pos)[0]

    def mlm_logits(self, sequence_output: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits ``[B, L, V]`` for masked-language-model training."""
        if self.mlm_head is None:
            raise ReconError("this encoder was loaded without an MLM head; load it with mlm_head=True")
        return self.mlm_head(sequence_output)


@dataclass
class EncoderBundle:
    """Everything a trainer needs for one encoder: the model, its tokenizer and marker tokens."""

    model: RelationEncoder
    tokenizer: Any
    special: SpecialTokens
    source: str
    # Names of weights that did not come from the source (e.g. a fresh MLM head for MiniLM).
    newly_initialized: tuple[str, ...] = field(default=())


def bare_backbone(model: nn.Module) -> nn.Module:
    """Drop BERT's pooler: it is unused by the relation representation and would leave
    parameters without gradients (which DistributedDataParallel rejects)."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def split_mlm_model(mlm_model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Split an ``AutoModelForMaskedLM`` into (backbone, head) sharing the tied parameters."""
    base_name = mlm_model.base_model_prefix
    backbone = getattr(mlm_model, base_name)
    heads = [(name, mod) for name, mod in mlm_model.named_children() if name != base_name]
    if len(heads) != 1:
        names = [name for name, _ in heads]
        raise ReconError(
            f"cannot use the MLM head of {type(mlm_model).__name__}: expected one head module next to "
            f"'{base_name}', found {names}"
        )
    return bare_backbone(backbone), heads[0][1]


def tie_mlm_decoder(encoder: RelationEncoder) -> None:
    """Make the MLM decoder weight the input embedding matrix (BERT-style tying), if it is not."""
    if encoder.mlm_head is None:
        return
    emb = encoder.backbone.get_input_embeddings()
    decoder = _decoder_linear(encoder.mlm_head)
    if decoder is not None and decoder.weight is not emb.weight:
        if decoder.weight.shape != emb.weight.shape:
            raise ReconError(f"MLM decoder {tuple(decoder.weight.shape)} cannot be tied to embeddings "
                             f"{tuple(emb.weight.shape)}")
        decoder.weight = emb.weight


def _decoder_linear(head: nn.Module) -> nn.Linear | None:
    """The vocabulary projection of an MLM head (the Linear whose output size is the vocabulary)."""
    for name in ("predictions.decoder", "decoder"):
        mod = head.get_submodule(name) if _has_submodule(head, name) else None
        if isinstance(mod, nn.Linear):
            return mod
    return None


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


__all__ = ["RECON_MANIFEST", "RelationEncoder", "EncoderBundle", "bare_backbone", "split_mlm_model", "tie_mlm_decoder"]
