"""Tiny BERT encoders for the model tests: a real architecture, a few thousand parameters."""
from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "models"
TINY_VOCAB = FIXTURES / "tiny_vocab.txt"


def tiny_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                      vocab_size=vocab_size, max_position_embeddings=64)


def make_tiny_bert_dir(root: Path, *, mlm: bool = False, seed: int = 0) -> Path:
    """Write a tiny BERT (tokenizer without [unusedN] slots + random weights) as a local HF directory."""
    import torch
    from transformers import BertForMaskedLM, BertModel, BertTokenizer

    torch.manual_seed(seed)
    tokenizer = BertTokenizer(str(TINY_VOCAB), do_lower_case=True)  # positional: vocab_file (v4) / vocab (v5)
    model = (BertForMaskedLM if mlm else BertModel)(tiny_config(len(tokenizer)))
    out = root / ("tiny-bert-mlm" if mlm else "tiny-bert")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
