"""Rendered words -> token ids for a Hugging Face tokenizer, keeping the entity positions.

Words are word-piece tokenised one at a time, so the index of every marker survives tokenisation
exactly; special tokens map straight to their ids and are never split. When a sentence is longer
than ``max_length`` a window around the two entities is kept rather than cutting blindly at the
end (a blind cut would drop the tail marker of long SemEval/TACRED sentences).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from .formats import Rendered


@dataclass(frozen=True)
class Encoded:
    input_ids: tuple[int, ...]
    head_pos: int
    tail_pos: int
    truncated: bool = False


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


def _window(length: int, keep: list[int], size: int) -> tuple[int, int]:
    """A ``[lo, hi)`` window of ``size`` tokens containing the ``keep`` positions when possible."""
    lo_need, hi_need = min(keep), max(keep) + 1
    if hi_need - lo_need >= size:
        return lo_need, lo_need + size
    slack = size - (hi_need - lo_need)
    lo = max(0, lo_need - slack // 2)
    hi = min(length, lo + size)
    lo = max(0, hi - size)
    return lo, hi


def encode(rendered: Rendered, pieces: WordPieceCache, max_length: int) -> Encoded:
    """Token ids ``[CLS] ... [SEP]`` of at most ``max_length`` with the head/tail positions."""
    tok = pieces.tokenizer
    ids: list[int] = []
    starts: list[int] = []
    for word in rendered.words:
        starts.append(len(ids))
        ids.extend(pieces.ids(word))
    head, tail = starts[rendered.head_index], starts[rendered.tail_index]
    budget = max_length - 2
    truncated = len(ids) > budget
    if truncated:
        if abs(head - tail) < budget:
            lo, hi = _window(len(ids), [head, tail], budget)
            ids = ids[lo:hi]
            head, tail = head - lo, tail - lo
        else:  # entities further apart than the budget: keep a half window around each
            half = budget // 2
            first, second = sorted((head, tail))
            a0 = max(0, min(first - half // 4, len(ids) - half))
            b0 = max(a0 + half, min(second - half // 4, len(ids) - (budget - half)))
            kept = ids[a0:a0 + half] + ids[b0:b0 + budget - half]
            remap = {first: first - a0, second: half + (second - b0)}
            ids, head, tail = kept, remap[head], remap[tail]
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    return Encoded((cls_id, *ids, sep_id), head + 1, tail + 1, truncated)
