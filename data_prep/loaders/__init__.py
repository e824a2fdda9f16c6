"""Benchmark file loaders: one module per format, all producing :class:`RelationExample`.

Kinds: ``opennre`` (JSON lines with token/h/t/relation: SemEval, Wiki80), ``tacred`` (JSON array,
inclusive ends), ``chemprot`` (JSON lines with inline ``<< >>``/``[[ ]]`` markers), ``fewrel``
(``{PID: [instance]}``), ``semeval2010`` (the official SemEval-2010 Task 8 release: TRAIN_FILE.TXT,
TEST_FILE_FULL.TXT, TEST_FILE.txt + TEST_FILE_KEY.TXT). Spans are always end exclusive and ``source``
is ``path:line`` (line-based files) or ``path#record`` (arrays/dicts).

A kind is one entry of :data:`KINDS` (file -> examples); a kind whose directory is not one
``train``/``dev``/``test`` file per split also has a :class:`Layout` in :data:`LAYOUTS` (which file
each split comes from, how to cut it out, its label inventory). Nothing else lists kinds.

Error policy (``on_error="raise"``, the default, stops at the first problem naming file, line or
record, and field; ``on_error="skip"`` skips the record and counts it in :class:`LoadReport` under
the reason below, keeping its first few locations; nothing is ever dropped silently). A UTF-8 byte
order mark at the start of a file is ignored. The policy
reaches every loader through ``load_dataset(..., on_error=)``, ``recon data ... --on-error`` and a
study's ``on_error``; the older keyword ``errors=`` is still accepted.

=========================================  ======================  ==========================
problem                                    reason                  with errors="skip"
=========================================  ======================  ==========================
file missing                               (DatasetNotFound)       stop
whole file not JSON / wrong top container  (DataError)             stop
empty file (or only blank lines)           (DataError)             stop
JSON nested too deeply (whole document)    (DataError)             stop
bytes not UTF-8 in a JSON document         (DataError)             stop
JSON array in a JSON-lines file            (DataError, line 1)     stop
malformed JSON on one line                 malformed_json          skip line
a line that is not UTF-8 (latin-1, UTF-16) bad_encoding            skip line
record is not an object, value wrong type  wrong_type              skip record
missing key                                missing_key             skip record
empty token list                           empty_tokens            skip record
span reversed/empty                        bad_span                skip record
span out of range                          span_out_of_range       skip record
FewRel indices with a gap                  noncontiguous_span      skip record
head and tail overlap                      overlapping_entities    skip record
name-only entity not found in tokens       name_not_found          skip record
entity with no pos and a blank name        empty_name              skip record
ChemProt markers missing/extra/nested      bad_markers             skip record
TACRED pos/ner length != tokens            bad_tags                skip record
label not in rel2id                        unknown_label           skip record
TACRED example id repeated                 duplicate_id            skip the repeat
every record of a file skipped, or none    (DataError)             stop
split file or rel2id a folder/broken link  (DataError)             stop
FILE and FILE.gz both present              (DataError)             stop
gzip file truncated or damaged             (DataError)             stop
rel2id.json malformed                      (DataError)             stop
SemEval-2010: UTF-16/binary, empty, JSON   (DataError)             stop
SemEval-2010: block without label/comment  bad_block               skip block
SemEval-2010: number missing/not rising    bad_id                  skip block
SemEval-2010: sentence not in quotes       unquoted_sentence       skip block
SemEval-2010: <e1>/<e2> tags wrong         bad_entity_tags         skip block
SemEval-2010: label not one of the 19      bad_label               skip block
SemEval-2010: TEST_FILE vs KEY mismatch    unmatched_key           skip line
=========================================  ======================  ==========================

A line of the SemEval-2010 release given to a JSON-lines kind is still ``malformed_json``, with a
message saying to use ``--kind semeval2010``.

Files are found and opened through ``_files``: a split file may be gzip-compressed, as ``train.txt.gz`` (found
where ``train.txt`` is absent) or under its plain name; either is read as if it were not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from recon.core.errors import DataError, DatasetNotFound, ReconError
from recon.data_prep.example import RelationExample
from recon.data_prep.loaders import chemprot, fewrel, opennre, semeval2010, tacred
from recon.data_prep.loaders._common import (ERROR_POLICIES, REASONS, Collector, Layout, LoadReport, PolicyError,
                                             RecordError, check_policy, describe_reason, nothing_loaded)
from recon.data_prep.loaders._files import check_readable, find_data_file, locate_data_file, not_a_file

KINDS: dict[str, Callable[[str | Path, Collector], list[RelationExample]]] = {
    "opennre": opennre.load,
    "tacred": tacred.load,
    "chemprot": chemprot.load,
    "fewrel": fewrel.load,
    "semeval2010": semeval2010.load,
}
LAYOUTS: dict[str, Layout] = {"semeval2010": semeval2010.LAYOUT}
NEGATIVE_NAMES = ("other", "no_relation", "na")
SPLIT_EXTENSIONS = (".txt", ".jsonl", ".json")

__all__ = ["KINDS", "LAYOUTS", "Layout", "layout_kinds_here", "LoadReport", "load_file", "read_rel2id",
           "find_negative", "check_labels", "find_split_file", "NEGATIVE_NAMES", "ERROR_POLICIES", "REASONS",
           "PolicyError", "check_policy", "describe_reason", "find_data_file", "locate_data_file", "not_a_file"]


def load_file(path: str | Path, kind: str, errors: str | None = None,
              report: LoadReport | None = None, *, on_error: str | None = None) -> list[RelationExample]:
    """Load one file of ``kind``; skipped-record counts are merged into ``report`` when given.

    ``on_error`` ("raise" | "skip", default "raise"); ``errors`` is its older name. A file that yields no
    example (every record skipped, or none in it) is a DataError: nothing downstream can use an empty split.
    """
    policy = check_policy(on_error, errors)
    if kind not in KINDS:
        raise ReconError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(KINDS)}")
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise DatasetNotFound(f"file {path} does not exist")
    check_readable(path)
    collector = Collector(path, policy)
    examples = KINDS[kind](path, collector)
    collector.report.loaded = len(examples)
    if not examples:
        raise nothing_loaded(path, collector.report, f"this many usually means the file is not of kind {kind!r} "
                             f"(kinds: {', '.join(KINDS)}) or is damaged")
    if report is not None:
        report.merge(collector.report)
    return examples


def read_rel2id(path: str | Path) -> list[str]:
    """Label names in id order from a ``{label: id}`` file; ids must be exactly 0..n-1."""
    path = Path(path)
    from recon.data_prep.loaders._common import read_json_document

    data = read_json_document(path, dict, "rel2id")
    ids = sorted(data.values()) if all(isinstance(v, int) for v in data.values()) else None
    if ids != list(range(len(data))):
        raise DataError("ids must be the integers 0..n-1, each used once", path=path)
    return [label for label, _ in sorted(data.items(), key=lambda kv: kv[1])]


def find_negative(labels: list[str]) -> str | None:
    """The negative class, found by name (``Other``, ``no_relation``, ``NA``), never by id 0."""
    for label in labels:
        if label.strip().lower() in NEGATIVE_NAMES:
            return label
    return None


def check_labels(examples: list[RelationExample], labels: list[str], rel2id_path: str | Path,
                 errors: str | None = None, report: LoadReport | None = None, *,
                 on_error: str | None = None) -> list[RelationExample]:
    """Drop (and count) or reject examples whose label is not in rel2id; a DataError when none is left."""
    errors = check_policy(on_error, errors)
    known = set(labels)
    kept = []
    dropped = LoadReport()
    for example in examples:
        if example.label in known:
            kept.append(example)
            continue
        path, line, record = _place(example.source)
        collector = Collector(path, errors)
        field = "relation" if line is not None else "relation/label"
        collector.bad(RecordError("unknown_label",
                                  f"label {example.label!r} is not in {rel2id_path}", field),
                      line=line, record=record)
        dropped.merge(collector.report)
    if report is not None:
        report.merge(dropped)
    if examples and not kept:
        raise nothing_loaded(_place(examples[0].source)[0], dropped,
                             f"{rel2id_path} does not seem to belong to these files")
    return kept


def _place(source: str) -> tuple[str, int | None, str | None]:
    """``(file, line, record)`` of an example's ``source`` (``path:line`` or ``path#record``)."""
    if "#" in source:
        path, _, record = source.partition("#")
        return path, None, record
    path, _, where = source.rpartition(":")
    return (path, int(where), None) if where.isdigit() else (path, None, where)


def find_split_file(directory: str | Path, split: str) -> Path | None:
    """``directory/split`` with the first existing extension among .txt/.jsonl/.json, each also as ``.gz``.

    A folder or broken link of one of those names is a DataError, not a file left out without a word.
    """
    for ext in SPLIT_EXTENSIONS:
        found = find_data_file(Path(directory) / f"{split}{ext}")
        if found is not None:
            return found
    return None


def layout_kinds_here(directory: str | Path) -> list[str]:
    """Kinds whose :class:`Layout` finds files in ``directory`` (for "use --kind X" hints)."""
    return [kind for kind, layout in LAYOUTS.items() if layout.files(Path(directory))]
