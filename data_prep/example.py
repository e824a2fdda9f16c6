"""The one typed example every loader produces, whatever the benchmark format."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

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
