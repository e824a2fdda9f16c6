"""FewRel ``{relation_id: [instance, ...]}`` (val_wiki = FewRel 1.0, val_pubmed = FewRel 2.0 DA).

An instance is ``{"tokens", "h": [name, Qid, [[idx, ...], ...]], "t": [...]}``. A mention may list
several occurrences; the first index list is the mention (as FewRel's own code does). Its span is
``[min, max + 1)``; index lists with a gap are rejected (reason ``noncontiguous_span``) rather than
silently widened, because a gap means the annotation does not describe one mention (none occur in
the shipped files). ``kb_id`` = the Qid. The label is the relation id (e.g. ``P177``); when
``pid2name.json`` sits next to the file its name goes into ``meta["relation_name"]``.
Errors name the record as ``PID[i]`` (relation id and 0-based index in its list).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.loaders._common import Collector, RecordError, check_pair, check_tokens, read_json_document, require

KIND = "fewrel"


def relation_names(directory: Path) -> dict[str, str]:
    """PID -> name from ``pid2name.json`` in ``directory`` (empty when absent)."""
    path = directory / "pid2name.json"
    if not path.exists():
        return {}
    data = read_json_document(path, dict, "pid2name")
    return {pid: (v[0] if isinstance(v, list) and v else str(v)) for pid, v in data.items()}


def _entity(raw: Any, tokens: tuple[str, ...], field: str) -> Entity:
    if not isinstance(raw, list) or len(raw) != 3:
        raise RecordError("wrong_type", "expected [name, id, [[token indices]]]", field)
    name, kb_id, occurrences = raw
    if not isinstance(occurrences, list) or not occurrences or not isinstance(occurrences[0], list) \
            or not occurrences[0]:
        raise RecordError("wrong_type", "expected a non-empty list of token index lists", f"{field}[2]")
    indices = occurrences[0]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise RecordError("wrong_type", "token indices must be integers", f"{field}[2]")
    start, end = min(indices), max(indices) + 1
    if sorted(set(indices)) != list(range(start, end)):
        raise RecordError("noncontiguous_span", f"token indices {indices} are not contiguous", f"{field}[2]")
    if start < 0 or end > len(tokens):
        raise RecordError("span_out_of_range", f"token indices {indices} out of range for {len(tokens)} tokens",
                          f"{field}[2]")
    return Entity(start, end, name=str(name) if name is not None else None,
                  kb_id=str(kb_id) if kb_id is not None else None)


def parse_record(record: Any, label: str, source: str, names: dict[str, str]) -> RelationExample:
    if not isinstance(record, dict):
        raise RecordError("wrong_type", f"expected a JSON object, got {type(record).__name__}")
    tokens = check_tokens(require(record, "tokens", list), "tokens")
    head = _entity(require(record, "h", list), tokens, "h")
    tail = _entity(require(record, "t", list), tokens, "t")
    check_pair(head, tail)
    meta = {"relation_name": names[label]} if label in names else {}
    return RelationExample(tokens, head, tail, label, source=source, meta=meta)


def load(path: str | Path, collector: Collector) -> list[RelationExample]:
    path = Path(path)
    data = read_json_document(path, dict, KIND)
    names = relation_names(path.parent)
    out = []
    for label, instances in data.items():
        if not isinstance(instances, list):
            collector.bad(RecordError("wrong_type", "expected a list of instances", label), record=label)
            continue
        for index, record in enumerate(instances):
            try:
                out.append(parse_record(record, label, f"{path}#{label}[{index}]", names))
            except RecordError as exc:
                collector.bad(exc, record=f"{label}[{index}]")
    return out
