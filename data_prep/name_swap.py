"""Name-swap test views: the same test sentences with the head/tail names replaced, to measure name reliance.

    from recon.data_prep.name_swap import make_view
    view = make_view("swap-type", test, train=ds.splits["train"], seed=0)
    view.examples[i]            # test[i] with new names; label, other tokens and order unchanged
    view.report.to_dict()       # swapped / untyped / skipped mentions, by reason
    view.identity               # cache key: kind + seed + the test split's and the name pools' content

Views (:data:`VIEW_KINDS`), each a function of (kind, seed, test examples, pools) only:

* ``swap-type``: each mention becomes another training name of the same type (``recon.data_prep.name_pools``
  says where types come from and what happens to untyped mentions);
* ``swap-unseen``: a same-type name that occurs nowhere in training nor in ``avoid`` (name_pools);
* ``swap-random``: a training name of another type (a control);
* ``onlyc``: the test examples unchanged, to be rendered in OnlyC (``View.render_format``) by whatever
  encodes them, so all views are evaluated the same way.

Rendered in the model's own format, a swap changes what C+M and OnlyM show; in C+T the type token is what
changes, so ``swap-type`` leaves C+T inputs as they were and ``swap-random`` swaps types; OnlyC / OnlyT
inputs have no names, so their predictions cannot flip (a check the tests make).

Draws are seeded per example (seed, kind and the example's content), so an example gets the same swap in
any subset or order of the test set. A replacement never repeats the mention's own name or the other
mention's (old or new). How spans are handled:

* disjoint head and tail: each replaced, later spans shifted by the length change (names may be longer
  or shorter, in any order of head and tail);
* the same span for both: one replacement (drawn for the head's type), both entities point at it;
* one inside the other (``University of Washington`` / ``Washington``): the inner name is swapped and the
  outer span grows or shrinks around it (``University of Oregon`` / ``Oregon``); counted as ``nested``;
* crossing spans: left unchanged and counted as skipped (``overlap``).

A mention with no name to draw (``no_candidate``: an empty pool for its type, e.g. no unseen name of a rare
type) or no type under the ``keep`` policy (``untyped``) stays as it is; :class:`SwapReport` counts each.
Every view example keeps ``source`` (file and line of the original) and ``meta["view"]``,
``meta["original_index"]`` (its index in the list given) and ``meta["changed"]``, so predictions pair one
to one with the original test predictions. POS/NER tags, where the example has them, are spliced with the
donor's tags (or dropped, ``tags_dropped``, when the donor has none).
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from recon.core.errors import ReconError
from recon.core.hashing import stable_hash
from recon.data_prep.example import Entity, RelationExample, examples_digest
from recon.data_prep.formats import InputFormat
from recon.data_prep.name_pools import UNTYPED, Name, NamePools, build_pools, mention_type, name_key, typed

SWAP_KINDS = ("swap-type", "swap-unseen", "swap-random")
RENDER_KINDS = {"onlyc": InputFormat.ONLYC}  # views that only render the test examples differently
VIEW_KINDS = (*SWAP_KINDS, *RENDER_KINDS)
SKIP_REASONS = {
    "untyped": "the mention has no entity type and the untyped policy is 'keep'",
    "no_candidate": "no name of the wanted type is left to draw",
    "overlap": "head and tail spans cross (neither contains the other)",
    "nested": "the outer name of a nested pair: it changes only where it contains the swapped inner name",
}


def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """The view names, checked; an unknown one is a ReconError listing the known ones."""
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in VIEW_KINDS]
    if unknown:
        raise ReconError(f"unknown view {unknown[0]!r}; known views: {', '.join(VIEW_KINDS)}")
    return kinds


def views_format_problem(fmt: str) -> str | None:
    """Why test views cannot measure name reliance of a model trained in ``fmt`` (None: they can).

    A model that never sees the names (OnlyC, C+T, OnlyT) gets the same input from every swap, so its drop
    and flip share would be 0 by construction and read as "no reliance on names"."""
    from recon.data_prep.formats import InputFormat

    parsed = InputFormat.parse(fmt)
    if parsed.shows_names:
        return None
    shown = ", ".join(f.value for f in InputFormat if f.shows_names)
    return (f"test views swap entity names, and a model trained in {parsed.value} never sees them (its figures "
            f"would be 0 by construction): ask for views on formats that show the names ({shown})")


@dataclass
class SwapReport:
    """What a view did: examples changed, mentions swapped, typed (``coverage``), untyped, skipped by reason."""

    kind: str
    examples: int = 0
    changed_examples: int = 0
    mentions: int = 0
    typed_mentions: int = 0
    swapped_mentions: int = 0
    same_span: int = 0
    nested: int = 0
    tags_dropped: int = 0
    untyped_policy: str = "pool"
    skipped: Counter = field(default_factory=Counter)

    @property
    def untyped_mentions(self) -> int:
        return self.mentions - self.typed_mentions

    @property
    def coverage(self) -> float:
        """Share of mentions with a type (annotated or spaCy's)."""
        return self.typed_mentions / self.mentions if self.mentions else 0.0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "examples": self.examples, "changed_examples": self.changed_examples,
                "mentions": self.mentions, "typed_mentions": self.typed_mentions,
                "untyped_mentions": self.untyped_mentions, "coverage": round(self.coverage, 4),
                "untyped_policy": self.untyped_policy, "swapped_mentions": self.swapped_mentions,
                "same_span": self.same_span, "nested": self.nested, "tags_dropped": self.tags_dropped,
                "skipped": dict(sorted(self.skipped.items()))}


@dataclass(frozen=True)
class View:
    """One view of a test split: ``examples[i]`` pairs with ``originals[i]``; ``changed[i]`` says whether its
    words differ. ``render_format``: the format to encode every view example in (OnlyC for ``onlyc``), or
    None for the trained model's own format. ``pool_stats``: the name pools' counts (``NamePools.stats``)."""

    kind: str
    seed: int
    examples: tuple[RelationExample, ...]
    originals: tuple[RelationExample, ...]
    changed: tuple[bool, ...]
    report: SwapReport
    identity: str
    render_format: InputFormat | None = None
    pool_stats: dict = field(default_factory=dict, compare=False)

    def format_for(self, trained: InputFormat) -> InputFormat:
        return self.render_format or trained


def swap_names(example: RelationExample, head: Name | None, tail: Name | None) -> RelationExample:
    """``example`` with the head's tokens replaced by ``head`` and the tail's by ``tail`` (None: kept).

    Same span: ``head`` replaces it for both (``tail`` is ignored). Nested: give only the inner entity's
    name; the outer span follows. Spans are re-indexed; every token outside the replaced spans is unchanged.
    """
    same = _same(example)
    if same:
        tail = None
    edits = sorted(((e.start, e.end, n) for e, n in ((example.head, head), (example.tail, tail)) if n is not None),
                   key=lambda edit: edit[:2])
    for (s0, e0, _), (s1, e1, _) in zip(edits, edits[1:]):
        if s1 < e0:
            raise ReconError(f"overlapping replacements [{s0}, {e0}) and [{s1}, {e1}) in {example.source or 'an example'}")

    def shift(p: int) -> int:  # a boundary moves by the length change of every edit ending at or before it
        return p + sum(len(n.tokens) - (e - s) for s, e, n in edits if e <= p)

    def splice(seq: tuple[str, ...], part: str) -> tuple[str, ...]:
        out: list[str] = []
        cursor = 0
        for s, e, n in edits:
            out += [*seq[cursor:s], *getattr(n, part)]
            cursor = e
        return tuple(out + list(seq[cursor:]))

    tokens = splice(example.tokens, "tokens")

    def moved(entity: Entity, name: Name | None) -> Entity:
        new = replace(entity, start=shift(entity.start), end=shift(entity.end))
        if name is not None:
            return replace(new, name=" ".join(name.tokens), type=name.type, type_source=name.type_source,
                           kb_id=name.kb_id)
        if any(entity.start <= s and e <= entity.end for s, e, _ in edits):  # an outer name around a swap
            return replace(new, name=" ".join(tokens[new.start:new.end]))
        return new

    tags = {p: splice(getattr(example, p), p) if getattr(example, p) is not None
            and all(getattr(n, p) is not None for _, _, n in edits) else None for p in ("pos", "ner")}
    return replace(example, tokens=tokens, head=moved(example.head, head),
                   tail=moved(example.tail, head if same else tail), **tags)


def _same(example: RelationExample) -> bool:
    return (example.head.start, example.head.end) == (example.tail.start, example.tail.end)


def _draw(pool: Sequence[Name], avoid: set, rng: random.Random) -> Name | None:
    """A uniform draw from ``pool`` minus names whose key is in ``avoid``."""
    for _ in range(8):  # rejection first: ``avoid`` holds at most four names
        if not pool:
            return None
        name = pool[rng.randrange(len(pool))]
        if name.key not in avoid:
            return name
    left = [n for n in pool if n.key not in avoid]
    return left[rng.randrange(len(left))] if left else None


def _example_rng(kind: str, seed: int, example: RelationExample) -> random.Random:
    key = repr((example.tokens, example.head.start, example.head.end, example.tail.start, example.tail.end,
                example.label))
    return random.Random(f"{kind}|{seed}|{hashlib.sha256(key.encode()).hexdigest()}")


def swap_one(kind: str, example: RelationExample, pools: NamePools, seed: int, report: SwapReport
             ) -> RelationExample:
    """One example of view ``kind`` (unchanged when nothing could be swapped), counted into ``report``."""
    head, tail = example.head, example.tail
    report.examples += 1
    report.mentions += 2
    report.typed_mentions += sum(e.type is not None and e.type != UNTYPED for e in (head, tail))
    if head.overlaps(tail) and not _same(example):
        if head.start <= tail.start and tail.end <= head.end:
            targets = [("tail", tail)]
        elif tail.start <= head.start and head.end <= tail.end:
            targets = [("head", head)]
        else:
            report.skipped["overlap"] += 2
            return example
        report.nested += 1
        report.skipped["nested"] += 1
    elif _same(example):
        targets = [("head", head)]
        report.same_span += 1
    else:
        targets = [("head", head), ("tail", tail)]
    rng = _example_rng(kind, seed, example)
    avoid = {name_key(example.tokens[e.start:e.end]) for e in (head, tail)}
    drawn: dict[str, Name] = {}
    for role, entity in targets:
        type_ = mention_type(entity, pools.untyped)
        name = _draw(pools.candidates(kind, type_), avoid, rng) if type_ is not None else None
        if name is None:
            report.skipped["untyped" if type_ is None else "no_candidate"] += 2 if _same(example) else 1
            continue
        avoid.add(name.key)
        drawn[role] = name
    if not drawn:
        return example
    swapped = swap_names(example, drawn.get("head"), drawn.get("tail"))
    report.swapped_mentions += 2 if _same(example) else len(drawn)
    report.tags_dropped += (example.pos is not None and swapped.pos is None)
    return swapped


def _code_digest() -> str:
    """Hash of the code that decides a view (a cached view must not outlive a change to it)."""
    from recon.data_prep import name_pools

    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (name_pools,)) +
                          Path(__file__).read_bytes()).hexdigest()[:16]


def view_identity(kind: str, seed: int, examples: Sequence[RelationExample], pools: NamePools | None) -> str:
    """The view's cache key: kind, seed, the examples' content (no file paths), the pools and this code.
    ``onlyc`` depends on the examples only (no seed, no pools)."""
    payload = {"kind": kind, "examples": examples_digest(examples, sources=False), "code": _code_digest()}
    if kind in SWAP_KINDS:
        payload |= {"seed": seed, "pools": pools.identity if pools is not None else None}
    return stable_hash(payload, 32)


def make_view(kind: str, examples: Sequence[RelationExample], *, seed: int = 0,
              train: Sequence[RelationExample] | None = None, pools: NamePools | None = None,
              unseen_sources: Sequence[RelationExample] = (), avoid: Iterable[Sequence[str] | str] = (),
              untyped: str = "pool", typing_key: str | None = None) -> View:
    """View ``kind`` of ``examples``. Swap views need ``pools`` (reuse them across kinds and seeds) or
    ``train`` (+ ``unseen_sources``, ``avoid``, ``untyped``) to build them; untyped examples are typed
    with spaCy first (cached on disk; ``typing_key`` names the cache entry)."""
    check_kinds([kind])
    originals = tuple(examples)
    if kind in RENDER_KINDS:
        report = SwapReport(kind, examples=len(originals), changed_examples=len(originals),
                            mentions=2 * len(originals), untyped_policy=untyped,
                            typed_mentions=sum(e.type not in (None, UNTYPED) for ex in originals
                                               for e in (ex.head, ex.tail)))
        marked = tuple(replace(ex, meta={**ex.meta, "view": kind, "original_index": i, "changed": True})
                       for i, ex in enumerate(originals))
        return View(kind, seed, marked, originals, (True,) * len(originals), report,
                    view_identity(kind, seed, originals, None), RENDER_KINDS[kind])
    if pools is None:
        if train is None:
            raise ReconError(f"view {kind!r} needs the training examples (train=) or name pools (pools=)")
        pools = build_pools(typed(train), typed(unseen_sources) if unseen_sources else (), avoid, untyped=untyped)
    source = typed(originals, typing_key)
    report = SwapReport(kind, untyped_policy=pools.untyped)
    out, changed = [], []
    for i, ex in enumerate(source):
        new = swap_one(kind, ex, pools, seed, report)
        changed.append(new.tokens != ex.tokens)
        out.append(replace(new, meta={**ex.meta, "view": kind, "original_index": i, "changed": changed[-1]}))
    report.changed_examples = sum(changed)
    return View(kind, seed, tuple(out), originals, tuple(changed), report,
                view_identity(kind, seed, originals, pools), pool_stats=pools.stats)


__all__ = ["VIEW_KINDS", "SWAP_KINDS", "RENDER_KINDS", "SKIP_REASONS", "View", "SwapReport", "make_view",
           "swap_names", "swap_one", "view_identity", "check_kinds"]
