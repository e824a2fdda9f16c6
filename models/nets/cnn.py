"""CNN relation classifier (Nguyen & Grishman, 2015): the paper's non-pre-trained baseline.

Each token is the concatenation of word, POS, NER and two relative-position embeddings (distance to
the head and to the tail representation position); one convolution (window 3, 230 filters), max
pooling over the sentence, dropout, and a linear layer. Inputs come from
``recon.data_prep.cnn_features.CNNFeaturizer``.

Word vectors (``build_cnn(..., word_vectors=...)``; the paper's CNN follows Zhang et al. 2017 and
starts from pretrained GloVe vectors):

* ``"embedded"`` (default, offline): a word's vector is the mean of the embedded encoder's (MiniLM's)
  input word-piece embeddings for the word's pieces, 384-d, scaled so the encoder's embedding table
  has std 0.28. On SemEval 10% (paper file, C+M, 5 seeds, full test) this beat random 50-d vectors
  (see ``bench/bench_cnn_vectors.py`` for the figures).
* a path to a GloVe-format text file (OpenNRE's ``glove.6B.50d.txt``, what the paper used): words
  missing from the file get random vectors at the file's scale; the run's notes give the coverage.
* ``"random"``: 50-d N(0, 1), the model's own init (what recon did before word vectors existed).

The vocabulary is the training set's words (test words unseen in training read as ``<unk>``); all
vectors, pretrained or not, are fine-tuned with the rest of the model.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from recon.core.defaults import DEFAULT_ENCODER, DEFAULT_SEED
from recon.core.errors import ReconError

log = logging.getLogger(__name__)

# The paper's training settings (Appendix B); the training loop reads them, the model only uses hidden.
CNN_DEFAULTS = {"optimizer": "sgd", "lr": 0.5, "batch_size": 160, "hidden": 230}


@dataclass
class CNNConfig:
    vocab_size: int
    num_labels: int
    pos_vocab_size: int
    ner_vocab_size: int
    position_vocab_size: int
    word_dim: int = 50
    tag_dim: int = 10
    position_dim: int = 5
    hidden: int = CNN_DEFAULTS["hidden"]
    window: int = 3
    dropout: float = 0.5


class CNNClassifier(nn.Module):
    """``forward(word_ids, pos_ids, ner_ids, pos1, pos2, mask) -> logits [B, num_labels]``."""

    def __init__(self, config: CNNConfig, word_vectors: torch.Tensor | None = None) -> None:
        super().__init__()
        if word_vectors is not None:
            if word_vectors.shape[0] != config.vocab_size:
                raise ValueError(f"word_vectors has {word_vectors.shape[0]} rows for a vocabulary of "
                                 f"{config.vocab_size}")
            config.word_dim = int(word_vectors.shape[1])
        self.config = config
        self.word = nn.Embedding(config.vocab_size, config.word_dim, padding_idx=0)
        if word_vectors is not None:
            with torch.no_grad():
                self.word.weight.copy_(word_vectors)
        self.pos = nn.Embedding(config.pos_vocab_size, config.tag_dim, padding_idx=0)
        self.ner = nn.Embedding(config.ner_vocab_size, config.tag_dim, padding_idx=0)
        self.pos1 = nn.Embedding(config.position_vocab_size, config.position_dim, padding_idx=0)
        self.pos2 = nn.Embedding(config.position_vocab_size, config.position_dim, padding_idx=0)
        in_dim = config.word_dim + 2 * config.tag_dim + 2 * config.position_dim
        self.conv = nn.Conv1d(in_dim, config.hidden, kernel_size=config.window, padding=config.window // 2)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden, config.num_labels)

    def forward(self, word_ids: torch.Tensor, pos_ids: torch.Tensor, ner_ids: torch.Tensor,
                pos1: torch.Tensor, pos2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.word(word_ids), self.pos(pos_ids), self.ner(ner_ids),
                       self.pos1(pos1), self.pos2(pos2)], dim=-1)            # [B, L, E]
        h = torch.tanh(self.conv(x.transpose(1, 2)))                          # [B, H, L]
        h = h.masked_fill(~mask.bool()[:, None, :], float("-inf"))            # padding never wins the max
        pooled = h.max(dim=2).values                                          # [B, H]
        return self.classifier(self.dropout(pooled))


WORD_VECTOR_CHOICES = ("embedded", "random")  # or a path to a GloVe-format text file
DEFAULT_WORD_VECTORS = "embedded"  # chosen by bench/bench_cnn_vectors.py (see its docstring)
RANDOM_WORD_DIM = CNNConfig.word_dim  # 50, as GloVe 6B.50d
# "embedded" vectors: the encoder's input embeddings at full width (384 for MiniLM) scaled to std 0.28,
# i.e. a per-word norm of about 5.5 (the 50-d N(0,1) random init: ~7). Chosen on
# seed 42's dev micro-F1 (bench/bench_cnn_vectors.py, 40-60 epochs): 384-d unscaled (std 0.056)
# learns slowly at lr 0.5 (0.40), 384-d std 1 saturates tanh (0.20), top-50 principal components
# at std 0.4 / 1.0 (0.47 / 0.51), 384-d std 0.28 (0.60); random 50-d: 0.51.
EMBEDDED_DIM: int | None = None
EMBEDDED_STD: float | None = 0.28


def project_embeddings(embeddings: torch.Tensor, dim: int | None = None, std: float | None = None) -> torch.Tensor:
    """The encoder's whole input-embedding table, optionally reduced to its top ``dim`` principal
    components (centred; each axis' sign fixed so its largest entry is positive) and scaled so its
    entries have standard deviation ``std``. Depends on the encoder only, never on a dataset."""
    emb = embeddings.detach().float().cpu()
    if dim is not None and dim < emb.shape[1]:
        centred = emb - emb.mean(0, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        axes = vh[:dim]
        signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
        emb = centred @ (axes * signs).T
    if std is not None:
        emb = emb * (std / float(emb.std()))
    return emb


def embedded_word_vectors(words: Iterable[str], tokenizer: Any, embeddings: torch.Tensor, *,
                          special_tokens: Iterable[str] = (), seed: int = 0
                          ) -> tuple[torch.Tensor, set[int]]:
    """Row ``i`` = mean of the input embeddings of ``words[i]``'s word pieces under ``tokenizer``.

    ``<pad>`` (row 0) is zero. ``<unk>`` takes the tokenizer's unknown-token embedding. Entries of
    ``special_tokens`` (the CNN's markers and type tokens, which are not words of the encoder's
    language) and words the tokenizer turns into nothing get a seeded random vector with the
    embedding matrix's standard deviation. Returns ``(matrix [len(words), dim], ids that got a
    pretrained vector)``.
    """
    from recon.data_prep.cnn_features import PAD, UNK

    words = list(words)
    special = set(special_tokens)
    emb = embeddings.detach().float().cpu()
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(words), emb.shape[1], generator=gen) * float(emb.std())
    found: set[int] = set()
    for i, word in enumerate(words):
        if word == PAD:
            matrix[i] = 0.0
            continue
        if word in special:
            continue
        if word == UNK:
            if tokenizer.unk_token_id is not None:
                matrix[i] = emb[tokenizer.unk_token_id]
            continue
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
        if ids:
            matrix[i] = emb[torch.tensor(ids)].mean(0)
            found.add(i)
    return matrix, found


def _encoder_embeddings(encoder: str) -> tuple[Any, torch.Tensor]:
    """(tokenizer, input word-piece embedding matrix) of an encoder alias, directory or checkpoint."""
    from recon.models.nets.loading import load_encoder

    state = torch.random.get_rng_state()  # loading may draw from the global RNG (resized embeddings)
    try:
        bundle = load_encoder(encoder)
    finally:
        torch.random.set_rng_state(state)
    return bundle.tokenizer, bundle.model.backbone.get_input_embeddings().weight.detach()


def word_vector_matrix(vocab, word_vectors: str | os.PathLike = DEFAULT_WORD_VECTORS, *,
                       special_tokens: Iterable[str] = (), encoder: str = DEFAULT_ENCODER, seed: int = 0,
                       embedded_dim: int | None = EMBEDDED_DIM, embedded_std: float | None = EMBEDDED_STD,
                       ) -> tuple[torch.Tensor | None, str]:
    """The CNN's initial word-embedding matrix for a fitted word ``Vocab``, and a note for the run.

    ``word_vectors``:

    * ``"embedded"``: each vocabulary word's vector is the mean of ``encoder``'s input word-piece
      embeddings (its tokenizer's pieces of the word), at the encoder's width (384 for MiniLM).
      Works offline. Markers/type tokens (``special_tokens``) are random, ``<unk>`` is ``[UNK]``'s.
    * ``"random"``: ``None`` -- the model initialises 50-d vectors itself (N(0, 1), torch's default).
    * a path to a GloVe-format text file (e.g. OpenNRE's ``glove.6B.50d.txt``): rows of the words it
      holds, seeded random rows (at the file's scale) for the others; the note gives the coverage.
    """
    from recon.data_prep.cnn_features import PAD, UNK, read_word_vectors

    choice = os.fspath(word_vectors)
    n_words = sum(1 for w in vocab.itos if w not in (PAD, UNK))
    if choice == "random":
        return None, f"CNN word vectors: random (N(0,1), {RANDOM_WORD_DIM}-d, no pre-training)"
    if choice == "embedded":
        tokenizer, emb = _encoder_embeddings(encoder)
        dim_in = emb.shape[1]
        emb = project_embeddings(emb, embedded_dim, embedded_std)
        matrix, found = embedded_word_vectors(vocab.itos, tokenizer, emb, special_tokens=special_tokens, seed=seed)
        how = f"{emb.shape[1]}-d" + (f" principal components of {dim_in}" if emb.shape[1] < dim_in else "")
        how += f", std {embedded_std:g}" if embedded_std is not None else ""
        note = (f"CNN word vectors: embedded (mean of {encoder}'s input word-piece embeddings, {how}): "
                f"{len(found)} of {n_words} vocabulary words; markers/type tokens random")
        log.info(note)
        return matrix, note
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ReconError(f"word_vectors must be one of {', '.join(WORD_VECTOR_CHOICES)} or a GloVe-format "
                         f"text file; {choice!r} is neither (no such file)")
    matrix, found = read_word_vectors(path, vocab, seed=seed)
    pct = 100.0 * len(found) / max(n_words, 1)
    note = (f"CNN word vectors: {path.name} ({matrix.shape[1]}-d): {len(found)} of {n_words} vocabulary words "
            f"found ({pct:.1f}%), the others random")
    log.info(note)
    return matrix, note


def build_cnn(featurizer, num_labels: int, *, hidden_size: int = CNN_DEFAULTS["hidden"],
              word_vectors: str | os.PathLike = DEFAULT_WORD_VECTORS, encoder: str = DEFAULT_ENCODER, seed: int = DEFAULT_SEED,
              **config: Any) -> tuple[CNNClassifier, list[str]]:
    """A seeded :class:`CNNClassifier` for a fitted ``CNNFeaturizer``; returns ``(model, notes)``.

    ``hidden_size`` is the number of convolution filters; the word dimension is that of the vectors
    (384 embedded with MiniLM, the file's for GloVe, 50 random). ``seed`` seeds the random rows of
    the vector matrix and, through ``seed_everything``, every other weight. ``config`` overrides other :class:`CNNConfig`
    fields (``window``, ``dropout``, ``tag_dim``, ``position_dim``).
    """
    from recon.models.nets.seed import seed_everything

    special = featurizer.special.all_tokens() if featurizer.special is not None else ()
    vectors, note = word_vector_matrix(featurizer.words, word_vectors, special_tokens=special, encoder=encoder,
                                       seed=seed)
    seed_everything(seed)  # the other weights depend on the seed only
    cfg = CNNConfig(num_labels=num_labels, hidden=hidden_size, **featurizer.vocab_sizes(), **config)
    return CNNClassifier(cfg, word_vectors=vectors), [note]
