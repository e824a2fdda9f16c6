"""OpenNRE-style JSON lines (SemEval, Wiki80, any new dataset in that shape).

One object per line: ``{"token": [...], "h": {"name", "pos": [s, e), "id"?, "type"?}, "t": {...},
"relation": str}``. Spans come from ``pos`` (end exclusive), never from ``name``: the two disagree on
241 Wiki80 dev lines. When an entity has a ``name`` but no ``pos`` the span is found by matching the
name against the tokens (case-insensitive, on the whitespace-joined token sequence); the first match
wins, and for the tail a match that does not overlap the head is preferred. An entity with no
``pos`` and a blank ``name`` (KBP37-style files have a few) is a bad record, reason ``empty_name``
(``missing_key`` when both keys are absent). ``type`` becomes ``Entity.type`` with
``type_source="annotation"`` (``UNK`` stays ``UNK``) and ``id`` the ``kb_id``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.loaders._common import Collector, RecordError, check_pair, check_span, check_tokens, load_json_lines, require

KIND = "opennre"


def find_name(tokens: tuple[str, ...], name: str, avoid: Entity | None = None) -> tuple[int, int] | None:
    """Token span ``[s, e)`` whose joined words equal ``name`` (case-insensitive), or None."""
    target = " ".join(name.split()).lower()
    words = [t.strip().lower() for t in tokens]
    matches = []
    for start in range(len(words)):
        if not words[start] or not target.startswith(words[start]):
            continue
        joined = ""
        for end in range(start, len(words)):
            if not words[end]:
                continue
            joined = f"{joined} {words[end]}" if joined else words[end]
            if joined == target:
                matches.append((start, end + 1))
                break
            if not target.startswith(joined):
                break
    if not matches:
        return None
    if avoid is not None:
        for start, end in matches:
            if end <= avoid.start or start >= avoid.end:
                return start, end
    return matches[0]


def _entity(raw: Any, tokens: tuple[str, ...], field: str, avoid: Entity | None = None) -> Entity:
    if not isinstance(raw, dict):
        raise RecordError("wrong_type", f"expected a JSON object for the entity, got {type(raw).__name__}", field)
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise RecordError("wrong_type", "entity name must be a string", f"{field}.name")
    if "pos" in raw:
        pos = raw["pos"]
        if not isinstance(pos, list) or len(pos) != 2:
            raise RecordError("wrong_type", f"expected pos = [start, end], got {pos!r:.60}", f"{field}.pos")
        start, end = check_span(pos[0], pos[1], len(tokens), f"{field}.pos")
    elif name is not None:
        if not name.strip():
            raise RecordError("empty_name", f"entity has no 'pos' and an empty name {name!r}", f"{field}.name")
        span = find_name(tokens, name, avoid)
        if span is None:
            raise RecordError("name_not_found", f"entity has no 'pos' and its name {name!r} does not occur "
                              "in the tokens", f"{field}.name")
        start, end = span
    else:
        raise RecordError("missing_key", "entity has neither 'pos' nor 'name'", f"{field}.pos")
    etype = raw.get("type")
    if etype is not None and not isinstance(etype, str):
        raise RecordError("wrong_type", "entity type must be a string", f"{field}.type")
    kb_id = raw.get("id")
    return Entity(
        start, end,
        name=name if name else " ".join(tokens[start:end]),
        type=etype, type_source="annotation" if etype is not None else None,
        kb_id=str(kb_id) if kb_id is not None else None,
    )


def parse_record(record: Any, source: str) -> RelationExample:
    """One parsed JSON object -> RelationExample (raises RecordError naming the field)."""
    if not isinstance(record, dict):
        raise RecordError("wrong_type", f"expected a JSON object, got {type(record).__name__}")
    tokens = check_tokens(require(record, "token", list), "token")
    head = _entity(require(record, "h", dict), tokens, "h")
    tail = _entity(require(record, "t", dict), tokens, "t", avoid=head)
    check_pair(head, tail)
    label = require(record, "relation", str)
    return RelationExample(tokens, head, tail, label, source=source)


def load(path: str | Path, collector: Collector) -> list[RelationExample]:
    return load_json_lines(path, KIND, collector, parse_record)
