"""Shared pieces of the loaders: the skip-or-stop policy, the load report, JSON readers, span checks.

Every loader reports a bad record through :meth:`Collector.bad`, which either raises the
:class:`DataError` (``on_error="raise"``, the default) or counts it under a reason in the
:class:`LoadReport` and skips the record (``on_error="skip"``), keeping the first few locations
(``file:line`` or ``file#record``) of every reason. Problems with the file as a whole (not JSON at
all, wrong top-level container) always raise: there is nothing sensible to skip to.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from recon.core.errors import DataError, ReconError
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.loaders._files import open_text, read_bytes

ERROR_POLICIES = ("raise", "skip")
MAX_LOCATIONS = 5  # locations kept per skip reason

# reason code (the LoadReport key) -> words shown to users
REASONS: dict[str, str] = {
    "malformed_json": "malformed JSON",
    "wrong_type": "value of the wrong type",
    "missing_key": "missing key",
    "empty_tokens": "empty token list",
    "empty_name": "empty entity name",
    "bad_span": "reversed or empty span",
    "span_out_of_range": "span out of range",
    "noncontiguous_span": "non-contiguous span",
    "overlapping_entities": "head and tail overlap",
    "name_not_found": "entity name not found in the tokens",
    "bad_markers": "bad ChemProt markers",
    "bad_tags": "tag count differs from token count",
    "unknown_label": "label not in rel2id",
    "duplicate_id": "repeated example id",
    "bad_encoding": "not UTF-8 text",
    # the SemEval-2010 Task 8 release format (kind semeval2010)
    "bad_block": "malformed SemEval-2010 block",
    "bad_id": "sentence number missing, repeated or not increasing",
    "unquoted_sentence": "sentence not in double quotes",
    "bad_entity_tags": "missing or unbalanced <e1>/<e2> tags",
    "bad_label": "not a SemEval-2010 label",
    "unmatched_key": "sentence and answer key do not match",
}

# A line of the official SemEval-2010 Task 8 release: ``8001\t"... <e1>x</e1> ..."`` (TRAIN_FILE.TXT,
# TEST_FILE.txt) or ``8001\tMessage-Topic(e1,e2)`` (TEST_FILE_KEY.TXT). Kinds that read other formats
# use it to say which kind the file needs.
SEMEVAL2010_LINE = re.compile(r'^\s*\d+\t(".*</?e[12]>|(?:Other|[A-Z][a-z]+-[A-Z][a-z]+\(e[12],e[12]\))\s*$)')
SEMEVAL2010_HINT = ("this looks like a file of the official SemEval-2010 Task 8 release (TRAIN_FILE.TXT, "
                    "TEST_FILE_FULL.TXT, TEST_FILE.txt, TEST_FILE_KEY.TXT), not JSON lines: use --kind semeval2010")


@dataclass(frozen=True)
class Layout:
    """How a kind's splits sit in a directory when they are not one ``train``/``dev``/``test`` file each.

    ``files(directory)`` maps each split found to the file it is read from; several splits may share
    one (SemEval-2010's train and dev both come from TRAIN_FILE.TXT), which is then parsed once.
    ``carve(split, examples)`` takes the split's examples out of its file's. ``labels`` is the
    format's label inventory in id order, used when the directory has no rel2id.json, so label ids
    do not depend on which labels a copy happens to contain. ``looks_like`` names the files
    ("X file (A, B or C)"), for "no X file in DIR" and for the hint when another kind is given this
    directory; ``note`` goes into the dataset's notes.
    """

    files: Callable[[Path], dict[str, Path]]
    carve: Callable[[str, list[RelationExample]], list[RelationExample]]
    labels: tuple[str, ...] = ()
    looks_like: str = ""
    note: str = ""


class PolicyError(ReconError, ValueError):
    """An ``on_error`` value other than ``"raise"`` or ``"skip"``."""


def check_policy(on_error: str | None, errors: str | None = None) -> str:
    """The effective policy: ``on_error`` wins over the older ``errors`` name; default ``"raise"``."""
    if on_error is not None and errors is not None and on_error != errors:
        raise PolicyError(f"on_error={on_error!r} and errors={errors!r} disagree; give only on_error")
    policy = on_error if on_error is not None else (errors if errors is not None else "raise")
    if policy not in ERROR_POLICIES:
        raise PolicyError(f"on_error must be one of {', '.join(ERROR_POLICIES)}, got {policy!r}")
    return policy


def describe_reason(reason: str) -> str:
    return REASONS.get(reason, reason.replace("_", " "))


@dataclass
class LoadReport:
    """What a load did: how many examples came out and how many records were skipped, per reason.

    ``skipped`` counts skipped records by reason code (see :data:`REASONS` for their wording);
    ``locations`` keeps the first :data:`MAX_LOCATIONS` places of each reason (``file:line`` or
    ``file#record``, plus the field); ``first_error`` the first full message of each reason.
    """

    path: str = ""
    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)  # reason -> first full message
    locations: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few locations

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def skipped_by_description(self) -> Counter:
        """``skipped`` keyed by the words of :data:`REASONS` (``{"empty entity name": 3}``)."""
        return Counter({describe_reason(r): n for r, n in self.skipped.items()})

    def add_skip(self, reason: str, location: str, message: str) -> None:
        self.skipped[reason] += 1
        self.first_error.setdefault(reason, message)
        places = self.locations.setdefault(reason, [])
        if len(places) < MAX_LOCATIONS:
            places.append(location)

    def merge(self, other: "LoadReport") -> None:
        self.loaded += other.loaded
        self.skipped.update(other.skipped)
        for reason, message in other.first_error.items():
            self.first_error.setdefault(reason, message)
        for reason, places in other.locations.items():
            mine = self.locations.setdefault(reason, [])
            mine.extend(places[: max(0, MAX_LOCATIONS - len(mine))])

    def summary_lines(self) -> list[str]:
        """One line per skip reason, most frequent first: count, words, code and first locations."""
        lines = []
        for reason, count in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            places = self.locations.get(reason, [])
            more = " ..." if count > len(places) else ""
            lines.append(f"{count:>6}  {describe_reason(reason)} ({reason}): {'; '.join(places)}{more}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "skipped": dict(self.skipped), "total_skipped": self.total_skipped,
                "locations": {r: list(p) for r, p in self.locations.items()}}


MAX_REASONS_SHOWN = 3  # skip reasons quoted when every record of a file was skipped


def nothing_loaded(path: str | Path, report: LoadReport, hint: str) -> DataError:
    """The error for a file that yielded no example: every record skipped (``on_error="skip"``), or none there.

    Skipping is for a few bad records; when it takes all of them the file is of another format or damaged,
    and training on nothing must not start. The message counts the skipped records and quotes the first
    error of the most frequent reasons, without repeating the file's name; ``hint`` says what usually causes it.
    """
    path = str(path)
    if not report.total_skipped:
        return DataError("holds no records: nothing to load (an empty split is never loaded as zero examples)",
                         path=path)
    reasons = []
    for reason, count in report.skipped.most_common(MAX_REASONS_SHOWN):
        first = report.first_error.get(reason, "")
        first = first[len(path) + 2:] if first.startswith(path + ", ") else first
        reasons.append(f"{count:,} {describe_reason(reason)} (first: {first})")
    more = len(report.skipped) - len(reasons)
    others = f" and {more} other reason(s)" if more > 0 else ""
    return DataError(f"all {report.total_skipped:,} records were skipped (on-error skip), so nothing is left to "
                     f"load: {'; '.join(reasons)}{others}. Skipping is for a few bad records; {hint}", path=path)


class RecordError(Exception):
    """Raised inside a record parser; the collector turns it into a located DataError."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.field = reason, message, field


class Collector:
    """Applies the error policy for one file and keeps its :class:`LoadReport`."""

    def __init__(self, path: str | Path, errors: str = "raise") -> None:
        self.path = str(path)
        self.errors = check_policy(errors)
        self.report = LoadReport(path=self.path)

    def bad(self, exc: RecordError, *, line: int | None = None, record: int | str | None = None) -> None:
        error = DataError(exc.message, path=self.path, line=line, record=record, field=exc.field)
        if self.errors == "raise":
            raise error
        location = self.path + (f":{line}" if line is not None else "") + (f"#{record}" if record is not None else "")
        if exc.field:
            location += f" field '{exc.field}'"
        self.report.add_skip(exc.reason, location, str(error))


def _undecodable(text: str) -> int | None:
    """0-based index of the first byte that was not UTF-8 (read with ``surrogateescape``), or None."""
    for index, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            return index
    return None


def _not_utf8(byte: int, column: int) -> str:
    return (f"not UTF-8 text: byte 0x{byte:02x} at column {column} (latin-1, UTF-16 or a binary file?); "
            "save the file as UTF-8")


def read_json_lines(path: Path, kind: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed)`` for non-blank lines; a malformed line yields a RecordError.

    A UTF-8 byte order mark is ignored; a line that is not UTF-8 (latin-1 bytes, UTF-16) yields a
    RecordError (reason ``bad_encoding``) naming its column; a file with no non-blank line at all is
    a DataError (an empty split is never silently loaded as zero examples). A gzip-compressed file is read
    as its text.
    """
    seen = False
    with open_text(path) as handle:
        for number, raw in enumerate(handle, 1):
            text = raw.strip()
            if not text:
                continue
            seen = True
            bad = _undecodable(raw)
            if bad is not None:
                yield number, RecordError("bad_encoding", _not_utf8(ord(raw[bad]) - 0xDC00, bad + 1))
                continue
            if number == 1 and text.startswith("[") and not text.endswith("]"):
                raise DataError(
                    f"this looks like a JSON array file, but kind {kind!r} expects one JSON object per line",
                    path=path, line=1,
                )
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                hint = f"; {SEMEVAL2010_HINT}" if SEMEVAL2010_LINE.match(raw) else ""
                yield number, RecordError("malformed_json", f"malformed JSON: {exc.msg} (column {exc.colno}){hint}")
            except RecursionError:
                yield number, RecordError("malformed_json", "JSON nested too deeply to be a record")
    if not seen:
        raise DataError("the file is empty (no JSON line in it)", path=path)


def load_json_lines(path: str | Path, kind: str, collector: "Collector",
                    parse_record: Callable[[Any, str], RelationExample]) -> list[RelationExample]:
    """Parse every line of a JSON-lines file with ``parse_record``; bad records go to ``collector``."""
    path = Path(path)
    out = []
    for line, record in read_json_lines(path, kind):
        try:
            if isinstance(record, RecordError):
                raise record
            out.append(parse_record(record, f"{path}:{line}"))
        except RecordError as exc:
            collector.bad(exc, line=line)
    return out


def _one_record_per_line(text: str) -> bool:
    """Whether the first lines of ``text`` are each one whole JSON object (a JSON-lines file)."""
    lines = [line for line in text.splitlines()[:3] if line.strip()]
    try:
        return bool(lines) and all(isinstance(json.loads(line), dict) for line in lines)
    except json.JSONDecodeError:
        return False


def read_json_document(path: Path, expected: type, kind: str) -> Any:
    """Parse a whole-file JSON document and check its top-level container type (always fatal).

    A UTF-8 byte order mark is ignored; bytes that are not UTF-8, an empty file and JSON nested
    deeper than Python's recursion limit are DataErrors naming the line. A gzip-compressed file is read as
    its text.
    """
    raw = read_bytes(path)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(_not_utf8(raw[exc.start], column), path=path, line=line) from None
    if not text.strip():
        raise DataError(f"the file is empty; kind {kind!r} expects a JSON {_json_name(expected)}", path=path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = ""
        if exc.msg == "Extra data" and exc.colno == 1 and _one_record_per_line(text):
            hint = (f"; it holds one JSON record per line, which kind {kind!r} does not read (one JSON "
                    f"{_json_name(expected)} per file): give the --kind of a JSON-lines format (opennre, chemprot)")
        raise DataError(f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}){hint}",
                        path=path, line=exc.lineno) from None
    except RecursionError:
        raise DataError("JSON nested too deeply to read", path=path) from None
    if not isinstance(data, expected):
        raise DataError(
            f"kind {kind!r} expects a JSON {_json_name(expected)} at the top level, got {_json_name(type(data))}",
            path=path,
        )
    return data


def _json_name(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(kind, kind.__name__)


def require(record: Any, key: str, expected: type | tuple[type, ...], field: str | None = None) -> Any:
    """``record[key]`` checked for presence and type; ``field`` is the dotted name used in errors."""
    name = field or key
    if not isinstance(record, dict):
        raise RecordError("wrong_type", f"expected a JSON object, got {_json_name(type(record))}", name.rsplit(".", 1)[0] if "." in name else None)
    if key not in record:
        raise RecordError("missing_key", f"missing key {key!r}", name)
    value = record[key]
    if not isinstance(value, expected) or isinstance(value, bool):
        want = expected if isinstance(expected, tuple) else (expected,)
        raise RecordError("wrong_type", f"expected {' or '.join(_json_name(w) for w in want)}, "
                          f"got {_json_name(type(value))} {value!r:.60}", name)
    return value


def check_tokens(tokens: Any, field: str) -> tuple[str, ...]:
    """A non-empty list of strings (whitespace-only tokens such as Wiki80's ``"\\n "`` are valid)."""
    if not isinstance(tokens, list):
        raise RecordError("wrong_type", f"expected an array of tokens, got {_json_name(type(tokens))}", field)
    if not tokens:
        raise RecordError("empty_tokens", "empty token list", field)
    if not all(isinstance(t, str) for t in tokens):
        raise RecordError("wrong_type", "every token must be a string", field)
    return tuple(tokens)


def check_span(start: Any, end: Any, n_tokens: int, field: str) -> tuple[int, int]:
    """Validate an end-exclusive span ``[start, end)`` against the sentence length."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
        raise RecordError("wrong_type", f"span bounds must be integers, got [{start!r}, {end!r}]", field)
    if start >= end:
        raise RecordError("bad_span", f"reversed or empty span [{start}, {end}) (end is exclusive)", field)
    if start < 0 or end > n_tokens:
        raise RecordError("span_out_of_range", f"span [{start}, {end}) out of range for {n_tokens} tokens", field)
    return start, end


def check_pair(head: Entity, tail: Entity, field: str = "t") -> None:
    """Head and tail must be distinct, non-overlapping mentions (the paper drops overlapping pairs)."""
    if head.overlaps(tail):
        raise RecordError("overlapping_entities",
                          f"head [{head.start}, {head.end}) and tail [{tail.start}, {tail.end}) overlap", field)
