"""The paper's five input formats (Section 2.2): what words the encoder sees for one example.

``render`` returns word-level tokens in which markers, blanks and type tokens are already the
vocabulary strings chosen by :class:`SpecialTokens`, plus the indices of the two positions whose
hidden states form the relation representation (the head/tail START markers, or the blank/type
token standing in for the mention).

The placeholder formats (OnlyC, C+T, OnlyT) come in two renderings, a protocol point
(``recon.core.protocol``): the placeholder alone (recon), or the placeholder inside the entity
markers, read at the start marker, as the authors' code renders them (``placeholder_markers``)::

    recon    [CLS] the most common [unused4] were about [unused5] and recycling . [SEP]          (4, 7)
    authors  [CLS] the most common [unused0] [unused4] [unused1] were about [unused2] [unused5]
             [unused3] and recycling . [SEP]                                                    (4, 9)
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from recon.core.errors import ReconError
from recon.data_prep.example import RelationExample
from recon.data_prep.special_tokens import SpecialTokens


class InputFormat(str, Enum):
    CM = "C+M"      # context + mentions, mentions wrapped in entity markers
    CT = "C+T"      # context + one type token per mention
    ONLYC = "OnlyC"  # context only: each mention replaced by one blank token
    ONLYM = "OnlyM"  # only the two marked mentions, in sentence order
    ONLYT = "OnlyT"  # only the two type tokens, in sentence order

    @classmethod
    def parse(cls, name: str) -> "InputFormat":
        for fmt in cls:
            if name.lower() in (fmt.value.lower(), fmt.name.lower()):
                return fmt
        known = ", ".join(f.value for f in cls)
        raise ReconError(f"unknown input format {name!r}; known formats: {known}")

    @property
    def needs_types(self) -> bool:
        return self in (InputFormat.CT, InputFormat.ONLYT)

    @property
    def shows_names(self) -> bool:
        """Whether the entity names reach the model (C+M, OnlyM): only then can a name-swap view change its input."""
        return self in (InputFormat.CM, InputFormat.ONLYM)


FORMAT_NAMES: tuple[str, ...] = tuple(f.value for f in InputFormat)  # "C+M", "C+T", "OnlyC", "OnlyM", "OnlyT"
FORMATS_HELP = f"input format: {', '.join(FORMAT_NAMES)}"


@dataclass(frozen=True)
class Rendered:
    """Word-level tokens for one example and the indices of the head/tail representation tokens.

    ``head_end``/``tail_end`` end (exclusively) the words rendered for each entity: start marker,
    mention and end marker in C+M/OnlyM, the one blank/type token otherwise. ``None`` means the
    entity is the single word at its index. Truncation keeps these spans whole when it can.
    """

    words: tuple[str, ...]
    head_index: int
    tail_index: int
    head_end: int | None = None
    tail_end: int | None = None

    @property
    def head_span(self) -> tuple[int, int]:
        return self.head_index, self.head_index + 1 if self.head_end is None else self.head_end

    @property
    def tail_span(self) -> tuple[int, int]:
        return self.tail_index, self.tail_index + 1 if self.tail_end is None else self.tail_end


def _mention_tokens(
    example: RelationExample, role: str, fmt: InputFormat, special: SpecialTokens, blank: bool,
    placeholder_markers: bool,
) -> list[str]:
    entity = example.head if role == "subj" else example.tail
    words = list(example.tokens[entity.start:entity.end])
    start, end, blank_token = (
        (special.head_start, special.head_end, special.head_blank) if role == "subj"
        else (special.tail_start, special.tail_end, special.tail_blank)
    )
    if fmt in (InputFormat.CT, InputFormat.ONLYT, InputFormat.ONLYC):
        placeholder = blank_token if fmt is InputFormat.ONLYC else special.type_token(role, entity.type)
        return [start, placeholder, end] if placeholder_markers else [placeholder]
    # C+M and OnlyM: markers around the mention; a blanked mention (pre-training) keeps its
    # markers so the start position still exists.
    return [start, *( [blank_token] if blank else words ), end]


def render(
    example: RelationExample,
    fmt: InputFormat,
    special: SpecialTokens,
    *,
    blank_head: bool = False,
    blank_tail: bool = False,
    placeholder_markers: bool = False,
) -> Rendered:
    """Render one example in ``fmt``. ``blank_*`` replace a marked mention by its blank token;
    ``placeholder_markers`` keeps the entity markers around OnlyC's blanks and C+T/OnlyT's type tokens."""
    head, tail = example.head, example.tail
    pieces = {
        "subj": _mention_tokens(example, "subj", fmt, special, blank_head, placeholder_markers),
        "obj": _mention_tokens(example, "obj", fmt, special, blank_tail, placeholder_markers),
    }
    ordered = sorted((("subj", head), ("obj", tail)), key=lambda item: item[1].start)
    words: list[str] = []
    index: dict[str, int] = {}
    end: dict[str, int] = {}
    with_context = fmt in (InputFormat.CM, InputFormat.CT, InputFormat.ONLYC)
    cursor = 0
    for role, entity in ordered:
        if with_context:
            words.extend(example.tokens[cursor:entity.start])
        index[role] = len(words)
        words.extend(pieces[role])
        end[role] = len(words)
        cursor = entity.end
    if with_context:
        words.extend(example.tokens[cursor:])
    return Rendered(tuple(words), index["subj"], index["obj"], end["subj"], end["obj"])
