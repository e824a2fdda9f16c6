"""The names a name-swap view draws from: training names by entity type, and names never seen in training.

A name is the token sequence of a head or tail mention, compared case-folded (``Paris`` = ``paris``).
Each mention's type is its annotated one (TACRED's ``subj_type``, Wiki80's ``type``) or, where the
dataset has none, spaCy's (:func:`typed`: ``recon.data_prep.entity_typing``, cached on disk). A mention
without a type (spaCy found no entity over it, ``UNK``; SemEval's nominals are 99% of these) is handled
by the ``untyped`` policy, which the caller chooses and the view report counts:

* ``"pool"`` (default): ``UNK`` is one more type, so an untyped mention is swapped with another untyped
  training name (on SemEval: a nominal for a nominal);
* ``"keep"``: an untyped mention is left as it is and counted as skipped (``untyped``).

**Where unseen names come from.** ``swap-unseen`` needs same-type names the model never read. They are
drawn from ``unseen_sources``: examples outside the training set, by default (``recon.models.train.views``)
the dataset's dev and test splits, so the test set's own other entities serve too. A candidate is kept
only when its case-folded tokens occur *nowhere* in the training sentences, as a contiguous run of
tokens (not merely "not a training mention"), and nowhere in ``avoid``: any other texts the model read,
e.g. a pre-training corpus's sentences (``[ex.tokens for ex in load_corpus(dir).examples]``) or a plain
list of names. :class:`NamePools` counts what each rule rejected.

Pools are built once per (train, unseen sources, avoid, policy) and shared by every view kind and seed;
:attr:`NamePools.identity` is their content hash (no file paths), part of each view's cache key.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from recon.core.errors import ReconError
from recon.core.hashing import stable_hash
from recon.data_prep.example import Entity, RelationExample, TypeSource, examples_digest

UNTYPED = "UNK"  # spaCy's label for "no entity here" (entity_typing), and annotated datasets' unknown type
UNTYPED_POLICIES = ("pool", "keep")


def name_key(tokens: Sequence[str]) -> tuple[str, ...]:
    """How names are compared: case-folded tokens."""
    return tuple(t.casefold() for t in tokens)


def mention_type(entity: Entity, untyped: str) -> str | None:
    """The type a mention is swapped within: its own, ``UNK`` for an untyped one under ``"pool"``, else None."""
    if entity.type is not None and entity.type != UNTYPED:
        return entity.type
    return UNTYPED if untyped == "pool" else None


@dataclass(frozen=True)
class Name:
    """One drawable name: its tokens, type and, when its example had them, its POS/NER tags."""

    tokens: tuple[str, ...]
    type: str
    type_source: TypeSource | None = None
    kb_id: str | None = None
    pos: tuple[str, ...] | None = None
    ner: tuple[str, ...] | None = None

    @property
    def key(self) -> tuple[str, ...]:
        return name_key(self.tokens)

    @classmethod
    def of(cls, example: RelationExample, entity: Entity, type_: str) -> "Name":
        span = slice(entity.start, entity.end)
        return cls(example.tokens[span], type_, entity.type_source, entity.kb_id,
                   example.pos[span] if example.pos is not None else None,
                   example.ner[span] if example.ner is not None else None)


def typed(examples: Sequence[RelationExample], cache_key: str | None = None) -> list[RelationExample]:
    """Examples with a type on every mention: annotated kept, the rest from spaCy (``UNK`` where it finds none).

    The spaCy pass is cached on disk under ``cache_key`` (default :func:`typing_key` of the examples), so a
    second view of the same split never loads spaCy; a subset of a split typed under the split's key
    reads the split's cache entry.
    """
    if all(ex.head.type is not None and ex.tail.type is not None for ex in examples):
        return list(examples)
    from recon.data_prep.entity_typing import ensure_types  # spaCy: only when a mention lacks a type

    return ensure_types(examples, cache_key=cache_key or typing_key(examples))


def typing_key(examples: Sequence[RelationExample]) -> str:
    """The spaCy-typing cache key of a split: its content hash (no file paths)."""
    return f"name_swap:{examples_digest(examples, sources=False)}"


def _collect(examples: Iterable[RelationExample], untyped: str) -> dict[str, dict[tuple[str, ...], Name]]:
    """type -> {name key: first name with that key}, in first-seen order (deterministic, no set order)."""
    out: dict[str, dict[tuple[str, ...], Name]] = {}
    for ex in examples:
        for entity in (ex.head, ex.tail):
            type_ = mention_type(entity, untyped)
            if type_ is not None:
                name = Name.of(ex, entity, type_)
                out.setdefault(type_, {}).setdefault(name.key, name)
    return out


def occurring(candidates: set[tuple[str, ...]], texts: Iterable[Sequence[str]]) -> set[tuple[str, ...]]:
    """The candidate keys that occur as a contiguous (case-folded) token run in any of ``texts``.

    Streams ``texts`` once and holds only the candidates, so a large corpus costs time, not memory.
    """
    lengths = sorted({len(c) for c in candidates})
    found: set[tuple[str, ...]] = set()
    for text in texts:
        folded = name_key(text.split() if isinstance(text, str) else text)
        for n in lengths:
            if n > len(folded):
                break
            for i in range(len(folded) - n + 1):
                gram = folded[i:i + n]
                if gram in candidates:
                    found.add(gram)
    return found


@dataclass(frozen=True)
class NamePools:
    """Names per type: ``seen`` from training, ``unseen`` from the unseen sources (see the module doc).

    ``stats``: training mentions, how many were typed (by source) and untyped, and for the unseen pool the
    candidates offered and those rejected as occurring in training or in ``avoid``.
    """

    seen: dict[str, tuple[Name, ...]]
    unseen: dict[str, tuple[Name, ...]]
    untyped: str
    identity: str
    stats: dict = field(default_factory=dict, compare=False)
    _others: dict = field(default_factory=dict, compare=False, repr=False)

    def candidates(self, kind: str, type_: str) -> tuple[Name, ...]:
        """What a mention of ``type_`` may become in view ``kind`` (``swap-random``: every seen name of
        another type, each distinct name equally likely)."""
        if kind == "swap-type":
            return self.seen.get(type_, ())
        if kind == "swap-unseen":
            return self.unseen.get(type_, ())
        if kind == "swap-random":
            if type_ not in self._others:
                self._others[type_] = tuple(n for t in sorted(self.seen) if t != type_ for n in self.seen[t])
            return self._others[type_]
        raise ReconError(f"no name pool for view {kind!r}")


def build_pools(train: Sequence[RelationExample], unseen_sources: Sequence[RelationExample] = (),
                avoid: Iterable[Sequence[str] | str] = (), *, untyped: str = "pool") -> NamePools:
    """Name pools from already-typed examples (:func:`typed`); ``avoid``: token sequences (or
    whitespace-separated strings) that unseen names must not occur in."""
    if untyped not in UNTYPED_POLICIES:
        raise ReconError(f"untyped must be one of {', '.join(UNTYPED_POLICIES)}, got {untyped!r}")
    avoid = list(avoid)
    seen = _collect(train, untyped)
    offered = _collect(unseen_sources, untyped)
    keys = {key for names in offered.values() for key in names}
    in_train = occurring(keys, (ex.tokens for ex in train))
    in_avoid = occurring(keys - in_train, avoid)
    unseen = {t: tuple(n for k, n in names.items() if k not in in_train and k not in in_avoid)
              for t, names in offered.items()}
    by_source: Counter = Counter()
    for ex in train:
        for entity in (ex.head, ex.tail):
            by_source["untyped" if entity.type in (None, UNTYPED) else entity.type_source or "unknown"] += 1
    stats = {"train_mentions": 2 * len(train), "train_mentions_by_type_source": dict(by_source),
             "seen_names": {t: len(n) for t, n in seen.items()},
             "unseen_candidates": len(keys), "unseen_rejected_in_train": len(in_train),
             "unseen_rejected_in_avoid": len(in_avoid),
             "unseen_names": {t: len(n) for t, n in unseen.items() if n}}
    identity = stable_hash({"train": examples_digest(train, sources=False),
                            "unseen_sources": examples_digest(unseen_sources, sources=False),
                            "avoid": stable_hash([list(name_key(a.split() if isinstance(a, str) else a))
                                                  for a in avoid], 64),
                            "untyped": untyped}, 32)
    return NamePools({t: tuple(n.values()) for t, n in seen.items()},
                     {t: n for t, n in unseen.items() if n}, untyped, identity, stats)


__all__ = ["Name", "NamePools", "build_pools", "typed", "typing_key", "occurring", "name_key", "mention_type",
           "UNTYPED", "UNTYPED_POLICIES"]
