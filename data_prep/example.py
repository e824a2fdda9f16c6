"""The one typed example every loader produces, whatever the benchmark format, and its portable identity.

An example's ``source`` is where this process read it (``/data/semeval/test.txt:12``); its identity
(:func:`portable_source`, ``RelationExample.id``) is the same on every machine: the dataset's folder,
the file and the line or record (``semeval/test.txt:12``). A trial reads its data from its node's
cache (``<cache>/data/<digest>/semeval/test.txt``), the report reads it from the driver's data
directory, and an older recon wrote absolute paths into ``predictions.jsonl``: all of them give the
same identity, so predictions join with examples wherever either was read.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Literal, Optional, Sequence

TypeSource = Literal["annotation", "spacy"]


@dataclass(frozen=True)
class Entity:
    """A mention as a token span ``[start, end)`` (end exclusive, whatever the file used)."""

    start: int
    end: int
    name: str | None = None
    type: str | None = None
    type_source: TypeSource | None = None
    kb_id: str | None = None

    def __len__(self) -> int:
        return self.end - self.start

    def overlaps(self, other: "Entity") -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class RelationExample:
    """One sentence with a head and a tail mention and the relation label between them.

    ``source`` says where the example came from (``path:line`` or ``path#record``) so that later
    errors can point back at the file; ``id`` is the same place without this machine's directories
    (``semeval/test.txt:12``), what predictions are keyed by.
    """

    tokens: tuple[str, ...]
    head: Entity
    tail: Entity
    label: str
    pos: tuple[str, ...] | None = None
    ner: tuple[str, ...] | None = None
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        """The portable identity (:func:`portable_source` of ``source``)."""
        return portable_source(self.source)

    def with_types(self, head_type: str, tail_type: str, source: TypeSource) -> "RelationExample":
        """Return a copy whose mentions carry entity types from ``source``."""
        return replace(
            self,
            head=replace(self.head, type=head_type, type_source=source),
            tail=replace(self.tail, type=tail_type, type_source=source),
        )


_LINE = re.compile(r"^(.*):(\d+)$")


def split_source(source: str) -> tuple[str, str]:
    """``path:12`` -> ``("path", ":12")``; ``path#record`` -> ``("path", "#record")``; else ``(source, "")``.

    A line number is the trailing ``:<digits>``; otherwise a record starts at the first ``#`` (a
    record name may hold ``/``, as relation names do; a ``#`` in a directory name is not supported).
    """
    line = _LINE.match(source)
    if line:
        return line.group(1), f":{line.group(2)}"
    path, sep, record = source.partition("#")
    return path, sep + record


def portable_source(source: str) -> str:
    """The identity of an example (or a file) on every machine: its folder, file and line or record.

    ``/home/u/.cache/recon/storage/data/3f2a/semeval/test.txt:12`` (a node's cache),
    ``/work/shared/datasets/semeval/test.txt:12`` (a data directory) and ``semeval/test.txt:12`` all
    give ``semeval/test.txt:12``: a dataset's files sit directly in its folder, wherever the folder
    is. A source without a folder (``test.txt:12``, ``"7"``) is returned as it is. Idempotent.
    """
    path, where = split_source(source)
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts[-2:]) + where if parts else source


class ExampleIndex:
    """Examples by their portable identity: the one join of predictions (or any source) with examples.

    ``get`` accepts any source of the same example: a portable identity, an absolute path of any
    machine, or a bare ``file:line`` (what a custom trainer may write) when only one indexed file
    has that name. Given the gold ``label`` a prediction recorded, an example with another label is
    not a match: the file changed since the prediction was made, and its sentence would mislead.
    """

    def __init__(self, examples: Iterable[RelationExample] = ()) -> None:
        self.by_id: dict[str, RelationExample] = {}
        self._by_name: dict[str, Optional[RelationExample]] = {}
        for example in examples:
            self.add(example)

    def add(self, example: RelationExample) -> None:
        key = example.id
        self.by_id[key] = example
        name = key.rpartition("/")[2]
        self._by_name[name] = None if name in self._by_name and self._by_name[name] is not example else example

    def get(self, source: str, label: Optional[str] = None) -> Optional[RelationExample]:
        key = portable_source(source)
        found = self.by_id.get(key)
        if found is None and "/" not in split_source(key)[0]:
            found = self._by_name.get(key)
        if found is not None and label is not None and found.label != label:
            return None
        return found

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, source: object) -> bool:
        return isinstance(source, str) and self.get(source) is not None


def examples_digest(examples: Sequence[RelationExample], *, sources: bool = True) -> str:
    """sha256 of the examples' content (what rendering reads, and the source each prediction names).

    The one content hash of a list of examples: encoded splits are cached under it
    (``recon.models.train.batching``). ``sources=False`` leaves out ``source`` (a file path, which
    differs between machines holding the same data): name-swap views name their source split so
    (``recon.data_prep.name_swap``), and equal examples give equal keys wherever the files live.
    """
    h = hashlib.sha256()
    for ex in examples:
        h.update(repr((ex.source if sources else "", ex.tokens, ex.head, ex.tail, ex.label, ex.pos,
                       ex.ner)).encode())
        h.update(b"\0")
    return h.hexdigest()
