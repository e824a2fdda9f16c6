"""ChemProt as preprocessed by SciBERT: JSON lines ``{"text", "label", "metadata"}``.

There are no tokens and no positions: the two mentions are marked inline as ``<< ... >>`` and
``[[ ... ]]``, in text order (``<<`` is *not* always the chemical). Head = the ``<< >>`` mention and
tail = the ``[[ ]]`` mention, as in the authors' code; the direction lives in the label
(``INHIBITOR``, ``SUBSTRATE``...), so this choice only has to be consistent.

Marker detection: the markers are normally written with a space inside (``<< x >>``), which tells
them apart from literal brackets in chemical names (``[[(1,1-dimethylethyl)amino]...``,
``[[[ R-(1)-...``, ``PGE1>STA2>>17-phenyl``). A spaced marker is used when there is exactly one;
otherwise the unspaced form (``<<x>>``) must occur exactly once. The closing marker is the first
one after the opening (spaced form first): ``<< Panx1 >> ... acid 94 >> probenecid`` uses ``>>`` as
"much greater than" later in the sentence. Missing, repeated, unbalanced or nested markers raise a
DataError on field ``text``.

Tokenisation: the text around and inside the markers is split with ``\\w+|[^\\w\\s]`` (words and
single punctuation marks), so spans are exact token indices.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.loaders._common import Collector, RecordError, check_pair, load_json_lines, require

KIND = "chemprot"
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MARKERS = {"head": ("<<", ">>"), "tail": ("[[", "]]")}


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def _find_open(text: str, marker: str, role: str) -> int:
    """Index of the one opening ``marker``, preferring the spaced form ``<< x``."""
    escaped = re.escape(marker)
    spaced = [m.start() for m in re.finditer(rf"{escaped}(?=\s)", text)]
    loose = [m.start() for m in re.finditer(escaped, text)]
    if len(spaced) == 1:
        return spaced[0]
    if not spaced and len(loose) == 1:
        return loose[0]
    if not loose:
        raise RecordError("bad_markers", f"missing opening {role} marker {marker!r}", "text")
    raise RecordError("bad_markers", f"{len(spaced) or len(loose)} opening {role} markers {marker!r}; "
                      "expected exactly one", "text")


def _find_close(text: str, marker: str, after: int, role: str) -> int:
    """Index of the first closing ``marker`` after ``after``, preferring the spaced form ``x >>``.

    The first one wins because literal ``>>`` ("much greater than") can follow the mention.
    """
    escaped = re.escape(marker)
    for pattern in (rf"(?<=\s){escaped}", escaped):
        hit = re.compile(pattern).search(text, after)
        if hit:
            return hit.start()
    raise RecordError("bad_markers", f"unbalanced {role} markers: no closing {marker!r} after the opening one",
                      "text")


def split_markers(text: str) -> tuple[list[str], Entity, Entity]:
    """Tokens plus the head (``<< >>``) and tail (``[[ ]]``) spans of one ChemProt text."""
    spans = {}
    for role, (open_m, close_m) in MARKERS.items():
        start = _find_open(text, open_m, role)
        end = _find_close(text, close_m, start + len(open_m), role)
        spans[role] = (start, end, len(open_m), len(close_m))
    a, b = sorted(spans.values())
    if b[0] < a[1] + a[3]:
        raise RecordError("bad_markers", "nested or overlapping entity markers", "text")
    tokens: list[str] = []
    entities = {}
    cursor = 0
    for role, (start, end, len_open, len_close) in sorted(spans.items(), key=lambda kv: kv[1][0]):
        tokens.extend(tokenize(text[cursor:start]))
        mention = tokenize(text[start + len_open:end])
        if not mention:
            raise RecordError("bad_markers", f"empty {role} mention between markers", "text")
        entities[role] = Entity(len(tokens), len(tokens) + len(mention), name=" ".join(mention))
        tokens.extend(mention)
        cursor = end + len_close
    tokens.extend(tokenize(text[cursor:]))
    return tokens, entities["head"], entities["tail"]


def parse_record(record: Any, source: str) -> RelationExample:
    if not isinstance(record, dict):
        raise RecordError("wrong_type", f"expected a JSON object, got {type(record).__name__}")
    text = require(record, "text", str)
    label = require(record, "label", str)
    tokens, head, tail = split_markers(text)
    check_pair(head, tail, "text")
    return RelationExample(tuple(tokens), head, tail, label, source=source)


def load(path: str | Path, collector: Collector) -> list[RelationExample]:
    return load_json_lines(path, KIND, collector, parse_record)
