"""TACRED JSON arrays (LDC2018T24): users bring their own copy.

Records are ``{id, relation, token, subj_start, subj_end, obj_start, obj_end, subj_type, obj_type,
stanford_pos, stanford_ner, ...}`` with END INDICES INCLUSIVE; they are converted to the
end-exclusive spans of :class:`Entity` here, once. Types come from ``subj_type``/``obj_type``
(``type_source="annotation"``), part-of-speech and NER tags from ``stanford_pos``/``stanford_ner``.
Errors name the record by its 0-based index in the array (and its ``id`` in the message). An ``id`` that
repeats an earlier record's is a bad record (reason ``duplicate_id``, naming both indices); the first copy is kept.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.loaders._common import Collector, RecordError, check_pair, check_span, check_tokens, read_json_document, require

KIND = "tacred"


def _tags(record: dict, key: str, n_tokens: int) -> tuple[str, ...] | None:
    if key not in record:
        return None
    tags = record[key]
    if not isinstance(tags, list) or len(tags) != n_tokens:
        raise RecordError("bad_tags", f"expected {n_tokens} tags, one per token", key)
    return tuple(str(t) for t in tags)


def parse_record(record: Any, source: str) -> RelationExample:
    if not isinstance(record, dict):
        raise RecordError("wrong_type", f"expected a JSON object, got {type(record).__name__}")
    tokens = check_tokens(require(record, "token", list), "token")
    ents = []
    for role in ("subj", "obj"):
        start = require(record, f"{role}_start", int)
        end_inclusive = require(record, f"{role}_end", int)
        start, end = check_span(start, end_inclusive + 1, len(tokens), f"{role}_start/{role}_end")
        etype = record.get(f"{role}_type")
        if etype is not None and not isinstance(etype, str):
            raise RecordError("wrong_type", "entity type must be a string", f"{role}_type")
        ents.append(Entity(start, end, name=" ".join(tokens[start:end]), type=etype,
                           type_source="annotation" if etype is not None else None))
    head, tail = ents
    check_pair(head, tail, "obj_start/obj_end")
    label = require(record, "relation", str)
    meta = {"id": record["id"]} if "id" in record else {}
    return RelationExample(tokens, head, tail, label,
                           pos=_tags(record, "stanford_pos", len(tokens)),
                           ner=_tags(record, "stanford_ner", len(tokens)),
                           source=source, meta=meta)


def _check_new_id(example: RelationExample, index: int, seen: dict[str, int]) -> None:
    """An ``id`` seen before is a RecordError naming both records: a copy-paste that repeated records would
    otherwise inflate the split (and the test score) without a word. Records without an ``id`` are not compared."""
    if "id" not in example.meta:
        return
    key = json.dumps(example.meta["id"], sort_keys=True)
    if key in seen:
        raise RecordError("duplicate_id", f"id {example.meta['id']!r} repeats record {seen[key]} (the same example "
                          "twice inflates the split; remove the copy)", "id")
    seen[key] = index


def load(path: str | Path, collector: Collector) -> list[RelationExample]:
    path = Path(path)
    data = read_json_document(path, list, KIND)
    out: list[RelationExample] = []
    seen: dict[str, int] = {}  # id (as JSON) -> index of its first record
    for index, record in enumerate(data):
        try:
            example = parse_record(record, f"{path}#{index}")
            _check_new_id(example, index, seen)
            out.append(example)
        except RecordError as exc:
            if isinstance(record, dict) and "id" in record and exc.reason != "duplicate_id":
                exc.message = f"{exc.message} (id {record['id']})"
            collector.bad(exc, record=index)
    return out
