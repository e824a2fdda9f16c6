"""SemEval-2010 Task 8 as its organisers released it (kind ``semeval2010``).

Files: ``TRAIN_FILE.TXT`` (8,000 examples), ``TEST_FILE_FULL.TXT`` (2,717, ids from 8001) and the
unlabelled ``TEST_FILE.txt`` with its answer key ``TEST_FILE_KEY.TXT`` (``<id>\\t<label>`` lines). An
example of the full files is a block of lines ended by a blank line::

    1\t"The system ... an arrayed <e1>configuration</e1> of antenna <e2>elements</e2>."
    Component-Whole(e2,e1)
    Comment: Not a collection: there is structure here, organisation.

Files are usually CRLF and may hold a few cp1252/latin-1 bytes: each line is decoded as UTF-8, or
else as cp1252 (latin-1 for the bytes cp1252 leaves undefined). A missing blank line between two
blocks is tolerated (the next numbered sentence line starts a new block).

Examples come out exactly as in recon's shipped copy (RE-Context-or-Names' JSON conversion) so the
same model trains and evaluates on either: tokens are NLTK ``word_tokenize`` tokens of the sentence
without its tags, lowercased (:mod:`._treebank`; 99.98% of the official sentences get the copy's
exact tokens); ``<e1>`` is the head and ``<e2>`` the tail, each spanning the tokens its characters
fall in (``The<e1>staff</e1>`` gives the token ``thestaff``, as in the copy); labels keep their
direction (``Component-Whole(e2,e1)``) and ``Other`` is the negative class. ``source`` is the
``path:line`` of the sentence line; ``meta`` holds the release ``id`` (and the ``comment``).

Errors (:class:`DataError` naming file, line and field; with ``on_error="skip"`` the block is
skipped and counted): a first line that is not ``<number>\\t"<sentence>"`` (``bad_block``/``bad_id``),
a number that repeats or does not increase (``bad_id``, field ``id``), an unquoted sentence
(``unquoted_sentence``), missing, repeated, unbalanced or nested ``<e1>``/``<e2>`` tags or an empty
mention (``bad_entity_tags``, field ``sentence``), head and tail in one token
(``overlapping_entities``), a label line that is not one of the 19 labels (``bad_label``, field
``label``), a missing label or ``Comment:`` line or a stray line (``bad_block``), and for
``TEST_FILE.txt`` a sentence without a key line or a key line without a sentence (``unmatched_key``).

Dataset layout (:data:`LAYOUT`, used by ``load_dataset(path=DIR, kind="semeval2010")``): the release
has no dev split, so train and dev both come from ``TRAIN_FILE.TXT`` and are cut exactly as recon's
copy cut them (:func:`split_train_dev`): for each relation, in order of first appearance, the first
``max(1, floor(n * 3/16))`` of its ``n`` examples (file order) are dev, the rest train. Checked
against the shipped copy and the official file: this gives its 6,507 / 1,493 examples, the same
sentences in the same order. Every split is listed relation by relation in order of first
appearance, file order within, as in the copy; test is ``TEST_FILE_FULL.TXT``, or ``TEST_FILE.txt``
+ ``TEST_FILE_KEY.TXT``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from recon.core.errors import DataError
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.loaders._common import Collector, Layout, RecordError, check_pair
from recon.data_prep.loaders._files import GZIP_SUFFIX, find_data_file, read_bytes
from recon.data_prep.loaders._treebank import tokenize_with_offsets

KIND = "semeval2010"
NEGATIVE = "Other"
# Label ids as recon's shipped rel2id.json: Other = 0, then the directed labels in the order they
# first appear in TRAIN_FILE.TXT.
LABELS: tuple[str, ...] = (
    "Other", "Component-Whole(e2,e1)", "Instrument-Agency(e2,e1)", "Member-Collection(e1,e2)",
    "Cause-Effect(e2,e1)", "Entity-Destination(e1,e2)", "Content-Container(e1,e2)", "Message-Topic(e1,e2)",
    "Product-Producer(e2,e1)", "Member-Collection(e2,e1)", "Entity-Origin(e1,e2)", "Cause-Effect(e1,e2)",
    "Component-Whole(e1,e2)", "Message-Topic(e2,e1)", "Product-Producer(e1,e2)", "Entity-Origin(e2,e1)",
    "Content-Container(e2,e1)", "Instrument-Agency(e1,e2)", "Entity-Destination(e2,e1)",
)
RELATIONS = tuple(sorted({label.partition("(")[0] for label in LABELS if label != NEGATIVE}))
DEV_NUMERATOR, DEV_DENOMINATOR = 3, 16  # dev = floor(n * 3/16) of each relation, at least one

TRAIN_FILE, TEST_FULL, TEST_SENTENCES, TEST_KEY = "TRAIN_FILE.TXT", "TEST_FILE_FULL.TXT", "TEST_FILE.txt", \
    "TEST_FILE_KEY.TXT"
# the folders of the organisers' zip (SemEval2010_task8_all_data/...), searched below --path too
RELEASE_FOLDERS = ("", "SemEval2010_task8_training", "SemEval2010_task8_testing_keys", "SemEval2010_task8_testing")

_SENTENCE_LINE = re.compile(r"^\s*(\d+)\s+(.*?)\s*$")
_TAG = re.compile(r"</?[eE]\d+>")
_COMMENT = re.compile(r"^\s*Comment\s*:(.*)$")
_KEY_LINE = re.compile(r"^\s*(\S+)\s+(.*?)\s*$")
_NUMBERED = re.compile(r"^\s*\d+\s")
_PREVIEW = 60  # characters of a bad line quoted in a message


def _preview(text: str) -> str:
    return repr(text if len(text) <= _PREVIEW else text[:_PREVIEW] + "...")


# ---------------------------------------------------------------- lines and blocks

def _decode(raw: bytes) -> str:
    """One line as text: UTF-8, else cp1252 (the release's few non-ASCII bytes), else latin-1."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every line, CRLF/CR/LF alike; a file that cannot be text is a DataError.

    A UTF-8 byte order mark is dropped. UTF-16 and binary files (NUL bytes) are refused here rather
    than parsed into nonsense; an empty file is refused too (never loaded as zero examples).
    """
    raw = read_bytes(path)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if b"\x00" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise DataError("NUL bytes: a UTF-16 or binary file, not a SemEval-2010 text file; save it as UTF-8",
                        path=path, line=line)
    lines = [(number, _decode(text)) for number, text in
             enumerate(raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"), 1)]
    if not any(text.strip() for _, text in lines):
        raise DataError("the file is empty (no SemEval-2010 example in it)", path=path)
    first = next(text.strip() for _, text in lines if text.strip())
    if first.startswith(("{", "[")):
        raise DataError("this is JSON (like recon's shipped SemEval copy), not the SemEval-2010 release format: "
                        "use --kind opennre", path=path, line=next(n for n, t in lines if t.strip()))
    return lines


def _is_sentence_line(text: str) -> bool:
    return bool(_NUMBERED.match(text))


def blocks(lines: list[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    """Runs of non-blank lines; a numbered sentence line inside a run starts a new block.

    So a missing blank line between two examples costs nothing, and a block that lost its label or
    comment line ends where the next example starts instead of swallowing it.
    """
    block: list[tuple[int, str]] = []
    for number, text in lines:
        if not text.strip() or (block and _is_sentence_line(text)):
            if block:
                yield block
            block = [(number, text)] if text.strip() else []
        else:
            block.append((number, text))
    if block:
        yield block


# ---------------------------------------------------------------- one sentence

class BlockError(RecordError):
    """A :class:`RecordError` that knows its line: a block spans several lines."""

    def __init__(self, line: int, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(reason, message, field)
        self.line = line


def sentence_line(text: str) -> tuple[int, str]:
    """``(number, sentence)`` from ``<number>\\t"<sentence>"``; the quotes are required and removed."""
    match = _SENTENCE_LINE.match(text)
    if not match:
        if text.strip().startswith('"'):
            raise RecordError("bad_id", "the sentence has no number in front (expected '<number>\\t\"<sentence>\"')",
                              "id")
        raise RecordError("bad_block", f"expected a sentence line '<number>\\t\"<sentence>\"', got {_preview(text)}",
                          "id")
    number, rest = int(match.group(1)), match.group(2)
    if len(rest) < 2 or not (rest.startswith('"') and rest.endswith('"')):
        raise RecordError("unquoted_sentence", f"the sentence must be in double quotes: {number}\\t\"...\", got "
                          f"{_preview(rest)}", "sentence")
    return number, rest[1:-1]


def strip_tags(sentence: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """The sentence without its tags and the character ranges of the ``<e1>`` and ``<e2>`` mentions.

    Exactly one ``<e1>..</e1>`` and one ``<e2>..</e2>``, each opened before it is closed, neither
    inside the other, neither empty; any other ``<eN>`` tag is an error too.
    """
    found: dict[str, list[int]] = {}
    for match in _TAG.finditer(sentence):
        tag = match.group(0)
        if tag not in ("<e1>", "</e1>", "<e2>", "</e2>"):
            raise RecordError("bad_entity_tags", f"unexpected tag {tag} (only <e1>..</e1> and <e2>..</e2>)",
                              "sentence")
        found.setdefault(tag, []).append(match.start())
    for tag in ("<e1>", "</e1>", "<e2>", "</e2>"):
        count = len(found.get(tag, []))
        if count != 1:
            raise RecordError("bad_entity_tags", f"{'missing' if count == 0 else f'{count} x'} {tag} tag "
                              "(each of <e1>, </e1>, <e2>, </e2> must occur once)", "sentence")
    (o1,), (c1,), (o2,), (c2,) = found["<e1>"], found["</e1>"], found["<e2>"], found["</e2>"]
    if c1 < o1 or c2 < o2:
        raise RecordError("bad_entity_tags", "unbalanced tags: a closing tag comes before its opening tag", "sentence")
    if o1 < o2 < c1 or o2 < o1 < c2:
        raise RecordError("bad_entity_tags", "nested or overlapping <e1> and <e2> mentions", "sentence")
    pieces: list[str] = []
    at: dict[str, int] = {}  # tag -> its offset in the text without tags
    cursor = 0
    for match in _TAG.finditer(sentence):
        pieces.append(sentence[cursor:match.start()])
        at[match.group(0)] = sum(map(len, pieces))
        cursor = match.end()
    plain = "".join(pieces) + sentence[cursor:]
    e1, e2 = (at["<e1>"], at["</e1>"]), (at["<e2>"], at["</e2>"])
    for name, (start, end) in (("<e1>", e1), ("<e2>", e2)):
        if not plain[start:end].strip():
            raise RecordError("bad_entity_tags", f"empty {name} mention", "sentence")
    return plain, e1, e2


def _covering(offsets: list[tuple[str, int, int]], chars: tuple[int, int]) -> tuple[int, int]:
    """The token span ``[s, e)`` of every token that shares a character with ``chars``."""
    hits = [i for i, (_, start, end) in enumerate(offsets) if start < chars[1] and end > chars[0]]
    return hits[0], hits[-1] + 1


def parse_sentence(sentence: str) -> tuple[tuple[str, ...], Entity, Entity]:
    """Lowercased tokens and the head (``<e1>``) and tail (``<e2>``) of one tagged sentence."""
    plain, e1, e2 = strip_tags(sentence)
    offsets = tokenize_with_offsets(plain)
    tokens = tuple(token.lower() for token, _, _ in offsets)
    head, tail = (Entity(s, e, name=" ".join(tokens[s:e])) for s, e in (_covering(offsets, e1),
                                                                        _covering(offsets, e2)))
    check_pair(head, tail, "sentence")
    return tokens, head, tail


def check_label(text: str) -> str:
    """The label of a label line, which must be one of the 19 (direction included)."""
    label = text.strip()
    if label in LABELS:
        return label
    if label in RELATIONS:
        raise RecordError("bad_label", f"label {label!r} has no direction: write {label}(e1,e2) or {label}(e2,e1)",
                          "label")
    spelled = next((known for known in LABELS if known.lower() == label.replace(" ", "").lower()), None)
    if spelled is not None:
        raise RecordError("bad_label", f"label {label!r} must be written exactly {spelled!r}", "label")
    raise RecordError("bad_label", f"{_preview(label)} is not a SemEval-2010 label (Other, or one of "
                      f"{', '.join(RELATIONS)} followed by (e1,e2) or (e2,e1))", "label")


# ---------------------------------------------------------------- files

class _Numbers:
    """Sentence numbers must increase through a file (a repeat is a copy-paste or a merge gone wrong)."""

    def __init__(self) -> None:
        self.last: int | None = None

    def check(self, number: int) -> None:
        if self.last is not None and number <= self.last:
            word = "repeats" if number == self.last else "does not increase"
            raise RecordError("bad_id", f"sentence number {number} {word} (the previous one is {self.last})", "id")
        self.last = number


def _example(line: int, text: str, numbers: _Numbers) -> tuple[int, tuple[str, ...], Entity, Entity]:
    """Number, tokens, head and tail of a sentence line (raises BlockError located at ``line``)."""
    try:
        number, sentence = sentence_line(text)
        numbers.check(number)
        tokens, head, tail = parse_sentence(sentence)
    except RecordError as exc:
        raise BlockError(line, exc.reason, exc.message, exc.field) from None
    return number, tokens, head, tail


def parse_block(path: Path, block: list[tuple[int, str]], numbers: _Numbers) -> RelationExample:
    """One ``sentence / label / Comment:`` block of TRAIN_FILE.TXT or TEST_FILE_FULL.TXT."""
    (line, text), rest = block[0], block[1:]
    number, tokens, head, tail = _example(line, text, numbers)
    if not rest:
        raise BlockError(line + 1, "bad_block", f"sentence {number} has no label line (expected e.g. "
                         "'Other' or 'Cause-Effect(e1,e2)' on the next line)", "label")
    label_line, label_text = rest[0]
    if _COMMENT.match(label_text):
        raise BlockError(label_line, "bad_block", f"sentence {number} has no label line: line {label_line} is "
                         "already its comment", "label")
    try:
        label = check_label(label_text)
    except RecordError as exc:
        raise BlockError(label_line, exc.reason, exc.message, exc.field) from None
    if len(rest) < 2:
        raise BlockError(label_line + 1, "bad_block", f"sentence {number} has no 'Comment:' line after its label",
                         "comment")
    comment_line, comment_text = rest[1]
    comment = _COMMENT.match(comment_text)
    if not comment:
        raise BlockError(comment_line, "bad_block", f"expected 'Comment: ...', got {_preview(comment_text)}",
                         "comment")
    if len(rest) > 2:
        raise BlockError(rest[2][0], "bad_block", f"unexpected line after the comment of sentence {number}: "
                         f"{_preview(rest[2][1])} (a blank line ends each example)", "comment")
    return RelationExample(tokens, head, tail, label, source=f"{path}:{line}",
                           meta={"id": number, "comment": comment.group(1).strip()})


def _sentences_only(lines: list[tuple[int, str]]) -> bool:
    """TEST_FILE.txt layout: no line is a label or a ``Comment:`` line (then every line is a sentence,
    and a stray line is reported as such instead of every sentence "missing its label")."""
    return not any(text.strip() in LABELS or _COMMENT.match(text) for _, text in lines)


def find_answer_key(path: Path) -> Path | None:
    """TEST_FILE_KEY.TXT next to ``path`` or in the release's ``SemEval2010_task8_testing_keys`` folder."""
    for folder in (path.parent, path.parent.parent / "SemEval2010_task8_testing_keys"):
        found = find_release_file(folder, TEST_KEY, subfolders=False)
        if found is not None:
            return found
    return None


def read_answer_key(path: Path, collector: Collector) -> dict[int, tuple[str, int]]:
    """``{id: (label, line)}`` from ``<id>\\t<label>`` lines; bad lines go to ``collector`` (the key's)."""
    key: dict[int, tuple[str, int]] = {}
    for line, text in read_lines(path):
        if not text.strip():
            continue
        try:
            match = _KEY_LINE.match(text)
            if not match or not match.group(1).isdigit():
                raise RecordError("bad_id", f"expected '<id>\\t<label>', got {_preview(text.strip())}", "id")
            number = int(match.group(1))
            if number in key:
                raise RecordError("bad_id", f"id {number} repeats (first on line {key[number][1]})", "id")
            key[number] = (check_label(match.group(2)), line)
        except RecordError as exc:
            collector.bad(exc, line=line)
    return key


def _load_sentences_only(path: Path, lines: list[tuple[int, str]], collector: Collector) -> list[RelationExample]:
    """TEST_FILE.txt: one numbered sentence per line, labels from TEST_FILE_KEY.TXT."""
    key_path = find_answer_key(path)
    if key_path is None:
        raise DataError(f"holds sentences only (like {TEST_SENTENCES}) and no {TEST_KEY} was found next to it or in "
                        "../SemEval2010_task8_testing_keys: the labels come from that file", path=path)
    key_collector = Collector(key_path, collector.errors)
    key = read_answer_key(key_path, key_collector)
    numbers, out, seen = _Numbers(), [], set()
    for line, text in lines:
        if not text.strip():
            continue
        numbered = _SENTENCE_LINE.match(text)
        if numbered and numbered.group(1).isdigit():
            seen.add(int(numbered.group(1)))  # a bad sentence still accounts for its key line
        try:
            number, tokens, head, tail = _example(line, text, numbers)
            if number not in key:
                raise BlockError(line, "unmatched_key", f"sentence {number} has no line in {key_path}", "label")
        except BlockError as exc:
            collector.bad(exc, line=exc.line)
            continue
        label, _ = key[number]
        out.append(RelationExample(tokens, head, tail, label, source=f"{path}:{line}", meta={"id": number}))
    for number, (_, line) in key.items():
        if number not in seen:
            key_collector.bad(RecordError("unmatched_key", f"id {number} has no sentence in {path}", "id"), line=line)
    collector.report.merge(key_collector.report)
    return out


def load(path: str | Path, collector: Collector) -> list[RelationExample]:
    """Every example of one release file, in file order (TRAIN_FILE, TEST_FILE_FULL or TEST_FILE + key)."""
    path = Path(path)
    lines = read_lines(path)
    if _sentences_only(lines):
        return _load_sentences_only(path, lines, collector)
    numbers, out = _Numbers(), []
    for block in blocks(lines):
        try:
            out.append(parse_block(path, block, numbers))
        except BlockError as exc:
            collector.bad(exc, line=exc.line)
    return out


# ---------------------------------------------------------------- the dataset layout

def find_release_file(directory: Path, name: str, subfolders: bool = True) -> Path | None:
    """``name`` (or ``name.gz``) in ``directory`` (or in the release's own subfolders), matched
    case-insensitively: copies of the release spell ``TEST_FILE.txt`` / ``TEST_FILE.TXT`` either way. A folder
    or broken link of that name is a DataError, as for every split file."""
    wanted = name.lower()
    for folder in (RELEASE_FOLDERS if subfolders else ("",)):
        place = directory / folder if folder else directory
        if not place.is_dir():
            continue
        for candidate in sorted(place.iterdir()):
            if candidate.name.lower() in (wanted, wanted + GZIP_SUFFIX):
                return find_data_file(candidate.with_name(candidate.name.removesuffix(GZIP_SUFFIX)))
    return None


def release_files(directory: Path) -> dict[str, Path]:
    """Split -> the release file it is read from: train and dev share TRAIN_FILE.TXT; test is
    TEST_FILE_FULL.TXT, else TEST_FILE.txt (labelled by TEST_FILE_KEY.TXT)."""
    out: dict[str, Path] = {}
    train = find_release_file(directory, TRAIN_FILE)
    if train is not None:
        out["train"] = out["dev"] = train
    test = find_release_file(directory, TEST_FULL) or find_release_file(directory, TEST_SENTENCES)
    if test is not None:
        out["test"] = test
    return out


def by_relation(examples: list[RelationExample]) -> dict[str, list[RelationExample]]:
    """Examples grouped by label, labels in order of first appearance, file order within each."""
    groups: dict[str, list[RelationExample]] = {}
    for example in examples:
        groups.setdefault(example.label, []).append(example)
    return groups


def split_train_dev(examples: list[RelationExample]) -> tuple[list[RelationExample], list[RelationExample]]:
    """recon's shipped train/dev cut of TRAIN_FILE.TXT: per relation, the first
    ``max(1, floor(n * 3/16))`` examples are dev and the rest train, listed relation by relation.

    Found by matching the shipped train.txt/dev.txt against the official file: every relation's dev
    examples are its first ones in file order, ``floor(n * 3/16)`` of them for all 18 relations with
    n >= 78, and the one Entity-Destination(e2,e1) example (n = 1) is in dev.
    """
    train: list[RelationExample] = []
    dev: list[RelationExample] = []
    for group in by_relation(examples).values():
        cut = max(1, len(group) * DEV_NUMERATOR // DEV_DENOMINATOR)
        dev.extend(group[:cut])
        train.extend(group[cut:])
    return train, dev


def carve(split: str, examples: list[RelationExample]) -> list[RelationExample]:
    """The examples of ``split`` out of those of its file, ordered as recon's copy orders them."""
    if split == "test":
        return [x for group in by_relation(examples).values() for x in group]
    train, dev = split_train_dev(examples)
    return train if split == "train" else dev


LAYOUT = Layout(
    files=release_files, carve=carve, labels=LABELS,
    looks_like=f"SemEval-2010 Task 8 release file ({TRAIN_FILE}, {TEST_FULL} or {TEST_SENTENCES})",
    note=(f"dev = the first 3/16 (at least one) of each relation's examples in {TRAIN_FILE}, the rest train: the "
          "cut of recon's shipped SemEval copy (6,507 / 1,493 on the official file); splits listed relation by "
          "relation, as in the copy"),
)
