"""Test-set exclusion: the entity pairs of benchmark dev/test sets that must not appear in pre-training.

Pairs are UNORDERED (stricter than ordered: a sentence holding (B, A) also tells the model about
(A, B)). A benchmark entity pair is keyed by its Wikidata ids when both mentions carry one (Wiki80,
FewRel), else by the normalised mention texts (read from the token span, not the ``name`` field).
All evaluation splits present locally are used: ``dev``, ``val`` (FewRel) and ``test``; missing ones
(Wiki80 has only dev here) are reported, not invented.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .index import pair_key
from .kg import normalise_name
from .linking import Exclusion

EVAL_SPLITS: tuple[str, ...] = ("dev", "val", "test")


def exclusion_from_examples(examples: Iterable) -> Exclusion:
    """Exclusion pairs of ``RelationExample`` s (ids where both are known, else normalised names)."""
    ids, names = set(), set()
    for ex in examples:
        if ex.head.kb_id and ex.tail.kb_id:
            ids.add(pair_key(ex.head.kb_id, ex.tail.kb_id))
        else:
            head = normalise_name(" ".join(ex.tokens[ex.head.start:ex.head.end]))
            tail = normalise_name(" ".join(ex.tokens[ex.tail.start:ex.tail.end]))
            if head and tail:
                names.add(pair_key(head, tail))
    return Exclusion(frozenset(ids), frozenset(names))


def exclusion_from_datasets(names: Iterable[str], data_dir: str | Path | None = None) -> tuple[Exclusion, dict]:
    """Union of the evaluation-split pairs of the named datasets, and what was read per dataset."""
    from ..registry import load_dataset  # the benchmark loaders; loaded only when excluding

    ids, name_pairs, report = set(), set(), {}
    for name in names:
        dataset = load_dataset(name, data_dir=str(data_dir) if data_dir else None)
        used = [s for s in EVAL_SPLITS if s in dataset.splits]
        part = exclusion_from_examples(ex for s in used for ex in dataset.splits[s])
        ids |= part.id_pairs
        name_pairs |= part.name_pairs
        report[name] = {
            "splits": used,
            "missing_splits": [s for s in EVAL_SPLITS if s in dataset.missing],
            "examples": sum(len(dataset.splits[s]) for s in used),
            "id_pairs": len(part.id_pairs),
            "name_pairs": len(part.name_pairs),
            "files": {s: dataset.files.get(s) for s in used},
        }
    return Exclusion(frozenset(ids), frozenset(name_pairs)), report
