"""Word / POS / NER / relative-position ids for the CNN baseline (Nguyen & Grishman, 2015).

The CNN reads the same rendered input formats as the transformers: markers, blanks and type tokens
are words of its vocabulary, and relative positions are measured to the head/tail representation
positions of the rendered example, so C+M, C+T, OnlyC, OnlyM and OnlyT all work unchanged.

Usage::

    feat = CNNFeaturizer(max_length=100).fit(train_examples, InputFormat.CM, special)
    batch = feat.transform(dev_examples)          # dict of LongTensors [B, L]
    model = CNNClassifier(CNNConfig(num_labels=19, **feat.vocab_sizes()))
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from recon.core.errors import DataError, ReconError
from recon.data_prep.example import RelationExample
from recon.data_prep.formats import InputFormat, Rendered, render
from recon.data_prep.special_tokens import SpecialTokens
from recon.data_prep.tagging import SpacyTagger, example_tags

log = logging.getLogger(__name__)

PAD, UNK = "<pad>", "<unk>"
FEATURE_KEYS = ("word_ids", "pos_ids", "ner_ids", "pos1", "pos2", "mask")


@dataclass
class Vocab:
    """String <-> id with ``<pad>`` = 0 and ``<unk>`` = 1."""

    itos: list[str] = field(default_factory=lambda: [PAD, UNK])

    def __post_init__(self) -> None:
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @classmethod
    def build(cls, counts: Counter, min_count: int = 1) -> "Vocab":
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in (PAD, UNK)),
                       key=lambda w: (-counts[w], w))  # frequency order, ties by name: deterministic
        return cls([PAD, UNK, *words])

    def __len__(self) -> int:
        return len(self.itos)

    def id(self, token: str) -> int:
        return self.stoi.get(token, 1)


def _keep_indices(length: int, a: int, b: int, size: int) -> list[int]:
    """At most ``size`` word indices that always include positions ``a`` and ``b``.

    One window around both when they fit, else half a window starting at each of them (relative
    positions stay exact because they are computed from the original indices).
    """
    if length <= size:
        return list(range(length))
    first, second = sorted((a, b))
    if second - first < size:
        lo = max(0, first - (size - (second - first + 1)) // 2)
        lo = min(lo, length - size)
        return list(range(lo, lo + size))
    half = size // 2
    return list(range(first, first + half)) + list(range(second, min(length, second + size - half)))


class CNNFeaturizer:
    """Fits vocabularies on the training examples and turns examples into CNN input tensors."""

    def __init__(self, max_length: int = 100, max_distance: int = 60, lowercase: bool = True,
                 tagger: SpacyTagger | None = None) -> None:
        self.max_length = max_length
        self.max_distance = max_distance
        self.lowercase = lowercase
        self.tagger = tagger
        self.fmt: InputFormat | None = None
        self.special: SpecialTokens | None = None
        self.words = Vocab()
        self.pos_tags = Vocab()
        self.ner_tags = Vocab()
        self._special_set: set[str] = set()

    @property
    def position_vocab_size(self) -> int:
        return 2 * self.max_distance + 2  # 0 = padding, 1..2D+1 = offsets -D..D

    def _norm(self, word: str) -> str:
        if self.lowercase and word not in self._special_set:
            return word.lower()
        return word

    def _render_all(self, examples: Sequence[RelationExample]) -> list[tuple[Rendered, tuple[str, ...], tuple[str, ...]]]:
        """Render words and, through the same renderer, the aligned POS and NER sequences."""
        assert self.fmt is not None and self.special is not None
        tags = example_tags(examples, self.tagger)
        out = []
        for ex, (pos, ner) in zip(examples, tags):
            for name, seq in (("pos", pos), ("ner", ner)):
                if len(seq) != len(ex.tokens):
                    raise DataError(f"{len(seq)} {name} tags for {len(ex.tokens)} tokens",
                                    path=ex.source or None, field=name)
            words = render(ex, self.fmt, self.special)
            # Rendering a copy whose tokens are tags puts each tag where its word went; markers and
            # type tokens stay as themselves and so get their own tag ids.
            pos_r = render(replace(ex, tokens=tuple(pos)), self.fmt, self.special).words
            ner_r = render(replace(ex, tokens=tuple(ner)), self.fmt, self.special).words
            out.append((words, pos_r, ner_r))
        return out

    def fit(self, train_examples: Sequence[RelationExample], fmt: InputFormat | str,
            special: SpecialTokens) -> "CNNFeaturizer":
        """Build word/POS/NER vocabularies from the TRAINING examples only (min count 1)."""
        if not train_examples:
            raise ReconError("CNNFeaturizer.fit needs at least one training example")
        self.fmt = InputFormat.parse(fmt) if isinstance(fmt, str) else fmt
        self.special = special
        self._special_set = set(special.all_tokens())
        rendered = self._render_all(train_examples)
        words, pos, ner = Counter(), Counter(), Counter()
        for r, p, n in rendered:
            words.update(self._norm(w) for w in r.words)
            pos.update(p)
            ner.update(n)
        words.update(special.all_tokens())  # every marker/type token is a word even if unseen in train
        self.words, self.pos_tags, self.ner_tags = Vocab.build(words), Vocab.build(pos), Vocab.build(ner)
        log.info("CNN vocab: %d words, %d POS tags, %d NER tags", len(self.words), len(self.pos_tags),
                 len(self.ner_tags))
        return self

    def rendered_words(self, examples: Sequence[RelationExample]) -> list[str]:
        """The distinct (normalised) words of ``examples`` as the CNN reads them, in first-seen order."""
        if self.fmt is None:
            raise ReconError("CNNFeaturizer.rendered_words called before fit")
        seen: dict[str, None] = {}
        for r, _, _ in self._render_all(examples):
            seen.update((self._norm(w), None) for w in r.words)
        return list(seen)

    def extend_vocab(self, words: Sequence[str]) -> int:
        """Append words missing from the word vocabulary (after the training words, ids of those
        unchanged); returns how many were added. Only useful with pretrained word vectors, which give
        such words a vector that training never touches (as a full GloVe vocabulary does)."""
        new = [w for w in dict.fromkeys(words) if w not in self.words.stoi]
        self.words = Vocab([*self.words.itos, *new])
        return len(new)

    def transform(self, examples: Sequence[RelationExample]) -> dict[str, Any]:
        """LongTensors ``[B, L]`` (L = longest example, at most ``max_length``) keyed by FEATURE_KEYS."""
        import torch

        if self.fmt is None:
            raise ReconError("CNNFeaturizer.transform called before fit")
        rows = []
        for r, p, n in self._render_all(examples):
            idx = _keep_indices(len(r.words), r.head_index, r.tail_index, self.max_length)
            d = self.max_distance
            rows.append((
                [self.words.id(self._norm(r.words[i])) for i in idx],
                [self.pos_tags.id(p[i]) for i in idx],
                [self.ner_tags.id(n[i]) for i in idx],
                [max(-d, min(d, i - r.head_index)) + d + 1 for i in idx],
                [max(-d, min(d, i - r.tail_index)) + d + 1 for i in idx],
            ))
        width = max(len(row[0]) for row in rows)
        out = {}
        for k, key in enumerate(FEATURE_KEYS[:5]):
            out[key] = torch.tensor([row[k] + [0] * (width - len(row[k])) for row in rows], dtype=torch.long)
        out["mask"] = torch.tensor([[1] * len(row[0]) + [0] * (width - len(row[0])) for row in rows],
                                   dtype=torch.long)
        return out

    def vocab_sizes(self) -> dict[str, int]:
        """Embedding-table sizes for ``recon.models.nets.cnn.CNNConfig(num_labels=..., **featurizer.vocab_sizes())``."""
        return {"vocab_size": len(self.words), "pos_vocab_size": len(self.pos_tags),
                "ner_vocab_size": len(self.ner_tags), "position_vocab_size": self.position_vocab_size}

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state so evaluation can rebuild the exact ids used in training."""
        if self.fmt is None or self.special is None:
            raise ReconError("CNNFeaturizer.state called before fit")
        return {"max_length": self.max_length, "max_distance": self.max_distance, "lowercase": self.lowercase,
                "format": self.fmt.value, "special": {**asdict(self.special), "added": list(self.special.added)},
                "words": self.words.itos, "pos": self.pos_tags.itos, "ner": self.ner_tags.itos}

    @classmethod
    def from_state(cls, state: dict[str, Any], tagger: SpacyTagger | None = None) -> "CNNFeaturizer":
        feat = cls(state["max_length"], state["max_distance"], state["lowercase"], tagger)
        sp = dict(state["special"])
        feat.special = SpecialTokens(**{**sp, "added": tuple(sp["added"])})
        feat._special_set = set(feat.special.all_tokens())
        feat.fmt = InputFormat.parse(state["format"])
        feat.words, feat.pos_tags, feat.ner_tags = Vocab(state["words"]), Vocab(state["pos"]), Vocab(state["ner"])
        return feat


def read_word_vectors(path: str | Path, vocab: Vocab, *, seed: int = 0, scale: float | None = None,
                      ) -> tuple[Any, set[int]]:
    """``(matrix [len(vocab), dim], ids of the vocabulary words found)`` from a GloVe-style text file.

    Each line is ``word f1 f2 ... fD`` (space separated; OpenNRE's ``glove.6B.50d`` and the Stanford
    GloVe files). A word2vec text header (``count dim``) on line 1 is skipped, blank lines too. A word
    found only in another case (``Paris`` for the lower-cased ``paris``) is used when the exact form is
    absent. Words missing from the file (markers, type tokens, rare words, ``<unk>``) get a seeded
    random vector with standard deviation ``scale`` (None: that of the vectors found, so they are on
    the file's scale); ``<pad>`` is zero. A line whose vector length differs from the first vector's,
    or a non-number in a vocabulary word's vector, raises :class:`DataError` naming file and line.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ReconError(f"word vector file {path} does not exist")
    rows: dict[int, list[float]] = {}
    lowered: dict[int, list[float]] = {}  # case-folded fallback, first occurrence wins
    dim = None
    with path.open(encoding="utf-8", errors="strict") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.rstrip("\r\n ").split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec text header
            if len(parts) < 2:
                if not line.strip():
                    continue
                raise DataError("expected a word followed by its vector", path=path, line=lineno, field="vector")
            word, values = parts[0], parts[1:]
            if dim is None:
                dim = len(values)
            elif len(values) != dim:
                raise DataError(f"vector has {len(values)} dimensions, expected {dim} (as on the first vector line)",
                                path=path, line=lineno, field="vector")
            idx = vocab.stoi.get(word)
            target = rows
            if idx is None:
                idx = vocab.stoi.get(word.lower())
                if idx is None or idx in lowered:
                    continue
                target = lowered
            if idx in (0,) or (target is rows and idx in rows):
                continue
            try:
                target[idx] = [float(v) for v in values]
            except ValueError:
                raise DataError("vector contains a value that is not a number", path=path, line=lineno,
                                field="vector") from None
    if dim is None:
        raise DataError("no word vectors found", path=path, field="vector")
    for idx, values in lowered.items():
        rows.setdefault(idx, values)
    found = torch.tensor(list(rows.values()), dtype=torch.float32).reshape(-1, dim)
    if scale is None:
        scale = float(found.std()) if found.numel() > 1 else 0.1
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(vocab), dim, generator=gen) * scale
    if rows:
        matrix[torch.tensor(list(rows))] = found
    matrix[0] = 0.0
    log.info("word vectors %s: %d of %d vocabulary words found (dim %d)", path, len(rows), len(vocab), dim)
    return matrix, set(rows)


def load_word_vectors(path: str | Path, vocab: Vocab, *, seed: int = 0, scale: float | None = None):
    """Embedding matrix ``[len(vocab), dim]`` from a GloVe-style text file (see :func:`read_word_vectors`)."""
    return read_word_vectors(path, vocab, seed=seed, scale=scale)[0]
