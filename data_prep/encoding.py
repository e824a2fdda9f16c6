"""Rendered words -> token ids for a Hugging Face tokenizer, keeping the entity positions.

Words are word-piece tokenised one at a time, so the index of every marker survives tokenisation
exactly; special tokens map straight to their ids and are never split. When a sentence is longer
than ``max_length`` a window around the two entities is kept rather than cutting blindly at the
end (a blind cut would drop the tail marker of long SemEval/TACRED sentences). The blind cut is
what the authors' code does, so it is available as the ``cut`` truncation (a protocol point, see
``recon.core.protocol``): the first ``max_length`` pieces, ``[SEP]`` dropped, and a start
marker that was cut away replaced by the last piece kept (``Encoded.marker_cut``). The window keeps
both entities whole -- start marker, every mention piece, end marker (or the blank / type token) --
whenever they fit; :func:`truncate` says how, and :class:`Encoded` flags what had to be given up
(ChemProt test at length 100, C+M: 363 sentences windowed, 40 with the text between the entities
cut, 1 whose 60-word chemical name cannot fit).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from recon.data_prep.formats import Rendered


@dataclass(frozen=True)
class Encoded:
    """Token ids with the head/tail representation positions and what truncation had to give up.

    ``truncated``: the sentence was longer than ``max_length`` and pieces were dropped.
    ``context_split``: the entities were further apart than ``max_length`` allows, so two windows,
    one around each entity, were joined: part of the text between them was cut.
    ``entity_truncated``: the two entities alone (markers and mentions) are longer than
    ``max_length - 2``, so an entity lost mention pieces and its end marker; the start markers /
    blank / type tokens that the representation reads are always kept. With ``cut`` truncation:
    an entity lost pieces to the cut.
    ``marker_cut``: ``cut`` truncation only: a start marker (or placeholder) lay beyond the cut, so
    the relation is read from the last piece kept, an ordinary word.
    """

    input_ids: tuple[int, ...]
    head_pos: int
    tail_pos: int
    truncated: bool = False
    entity_truncated: bool = False
    context_split: bool = False
    marker_cut: bool = False


class WordPieceCache:
    """Caches word -> ids per tokenizer: the same words recur across formats, epochs and seeds."""

    def __init__(self, tokenizer, special_tokens: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.special = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in special_tokens}
        self._ids = lru_cache(maxsize=200_000)(self._word_ids)

    def _word_ids(self, word: str) -> tuple[int, ...]:
        pieces = self.tokenizer.tokenize(word)
        if not pieces:  # whitespace-only tokens (Wiki80 has "\n " and "\u00a0"): keep alignment
            return ()
        return tuple(self.tokenizer.convert_tokens_to_ids(pieces))

    def ids(self, word: str) -> tuple[int, ...]:
        if word in self.special:
            return (self.special[word],)
        return self._ids(word)


def _hand_out(extra: int, room: list[int], sides: Sequence[int]) -> list[int]:
    """Share ``extra`` context pieces round robin over ``sides``; side ``i`` draws from the pool
    ``room[sides[i]]`` (two sides may share one pool: the text between two windows)."""
    take = [0] * len(sides)
    room = list(room)
    while extra > 0:
        moved = False
        for i, pool in enumerate(sides):
            if extra > 0 and room[pool] > 0:
                take[i] += 1
                room[pool] -= 1
                extra -= 1
                moved = True
        if not moved:
            break
    return take


def truncate(
    length: int, spans: Sequence[tuple[int, int]], budget: int
) -> tuple[list[tuple[int, int]], bool, bool]:
    """Which piece ranges of a ``length``-piece sequence to keep within ``budget`` pieces.

    ``spans`` are the two entities' ``[start, end)`` piece ranges (start = the representation
    token, always kept). Returns ``(windows, context_split, entity_truncated)``, trying in turn:

    1. one window holding both entities whole, the spare room shared evenly before and after;
    2. entities further apart than the budget: one window per entity, each entity whole, the spare
       room shared round robin over both sides of both (``context_split``);
    3. the two entities alone exceed the budget (``entity_truncated``): one window from the first
       start marker when the second start marker fits in it (the second entity loses its tail),
       else one window per entity keeping each one's leading pieces, start marker first.
    """
    if length <= budget:
        return [(0, length)], False, False
    if budget < 2:
        raise ValueError(f"max_length must leave room for both entity positions, got a budget of {budget}")
    (a0, a1), (b0, b1) = sorted(spans)
    if b1 - a0 <= budget:  # both whole in one window
        left, right = _hand_out(budget - (b1 - a0), [a0, length - b1], [0, 1])
        return [(a0 - left, b1 + right)], False, False
    len_a, len_b = a1 - a0, b1 - b0
    if len_a + len_b <= budget:  # two windows, text between the entities cut
        pre_a, post_a, pre_b, post_b = _hand_out(
            budget - len_a - len_b, [a0, b0 - a1, length - b1], [0, 1, 1, 2])
        return [(a0 - pre_a, a1 + post_a), (b0 - pre_b, b1 + post_b)], True, False
    if b0 - a0 < budget:  # entities alone too long, both starts fit: first whole, second cut
        return [(a0, a0 + budget)], False, True
    keep_a = min(len_a, max(budget // 2, budget - len_b))
    return [(a0, a0 + keep_a), (b0, b0 + budget - keep_a)], True, True


TRUNCATIONS = ("window", "cut")


def _cut(ids: list[int], spans: Sequence[tuple[int, int]], max_length: int, cls_id: int, sep_id: int) -> Encoded:
    """The authors' truncation: ``[CLS] + pieces + [SEP]`` cut to its first ``max_length`` ids and each
    position clamped to the last one kept."""
    full = (cls_id, *ids, sep_id)
    (h0, h1), (t0, t1) = ((lo + 1, hi + 1) for lo, hi in spans)  # +1: [CLS]
    last = max_length - 1
    truncated = len(full) > max_length
    return Encoded(full[:max_length], min(h0, last), min(t0, last), truncated,
                   entity_truncated=truncated and max(h1, t1) > max_length, marker_cut=max(h0, t0) > last)


def encode(rendered: Rendered, pieces: WordPieceCache, max_length: int, truncation: str = "window") -> Encoded:
    """Token ids ``[CLS] ... [SEP]`` of at most ``max_length`` with the head/tail positions.

    A longer sentence is cut by :func:`truncate` (``window``): both entities (markers and mention)
    stay whole whenever ``max_length`` allows it; or (``cut``) at ``max_length`` as the authors' code
    does. The flags of :class:`Encoded` say what was given up.
    """
    tok = pieces.tokenizer
    ids: list[int] = []
    starts: list[int] = []
    for word in rendered.words:
        starts.append(len(ids))
        ids.extend(pieces.ids(word))
    starts.append(len(ids))
    spans = [(starts[lo], starts[hi]) for lo, hi in (rendered.head_span, rendered.tail_span)]
    if truncation == "cut":
        return _cut(ids, spans, max_length, tok.cls_token_id, tok.sep_token_id)
    if truncation != "window":
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    windows, split, cut = truncate(len(ids), spans, max_length - 2)
    truncated = len(ids) > max_length - 2
    kept: list[int] = []
    offset = {}  # window start -> where its pieces begin in ``kept``
    for lo, hi in windows:
        offset[lo] = len(kept) - lo
        kept.extend(ids[lo:hi])
    head, tail = (next(s + offset[lo] for lo, hi in windows if lo <= s < hi) for s, _ in spans)
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    return Encoded((cls_id, *kept, sep_id), head + 1, tail + 1, truncated, cut, split)
