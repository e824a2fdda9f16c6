"""The one typed example every loader produces, whatever the benchmark format."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

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
    errors and predictions can point back at the file.
    """

    tokens: tuple[str, ...]
    head: Entity
    tail: Entity
    label: str
    pos: tuple[str, ...] | None = None
    ner: tuple[str, ...] | None = None
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def with_types(self, head_type: str, tail_type: str, source: TypeSource) -> "RelationExample":
        """Return a copy whose mentions carry entity types from ``source``."""
        return replace(
            self,
            head=replace(self.head, type=head_type, type_source=source),
            tail=replace(self.tail, type=tail_type, type_source=source),
        )


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
