"""Entity markers, blanks and type tokens, and how they map onto a tokenizer's vocabulary.

This is the one place where recon decides which vocabulary entries stand for markers. A vocabulary
with spare ``[unusedN]`` slots (BERT's) uses them exactly as the paper did: head ``[unused0] ...
[unused1]``, tail ``[unused2] ... [unused3]``, blanks ``[unused4]``/``[unused5]`` and type tokens
``[unused{10+id}]``. Any other vocabulary gets added special tokens (and the encoder resizes its
embedding matrix, see ``recon.models.nets.encoder``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

# The type inventory: spaCy/OntoNotes labels (Wiki80, and what spaCy assigns to SemEval/ChemProt),
# TACRED's Stanford NER types, and UNK. Ids follow this order, so type tokens are stable across
# datasets and runs. Types outside it are rendered as UNK (counted by the caller).
ENTITY_TYPES: tuple[str, ...] = (
    "UNK",
    # OntoNotes / spaCy
    "PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW",
    "LANGUAGE", "DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL",
    # TACRED (Stanford CoreNLP) types not already above
    "ORGANIZATION", "LOCATION", "MISC", "NUMBER", "DURATION", "SET", "CITY", "COUNTRY",
    "STATE_OR_PROVINCE", "NATIONALITY", "RELIGION", "TITLE", "IDEOLOGY", "CRIMINAL_CHARGE",
    "CAUSE_OF_DEATH", "URL", "EMAIL",
)
_TYPE_ID = {t: i for i, t in enumerate(ENTITY_TYPES)}
ROLES = ("subj", "obj")
FIRST_TYPE_SLOT = 10  # [unused10] onwards, as the authors' code


def canonical_type(entity_type: str | None) -> str:
    """Map a raw type label to the inventory (``UNK`` when absent or unknown)."""
    if not entity_type:
        return "UNK"
    label = entity_type.strip().upper()
    return label if label in _TYPE_ID else "UNK"


def type_symbol(role: str, entity_type: str | None) -> str:
    """Symbolic name of a type token, e.g. ``subj_PERSON``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return f"{role}_{canonical_type(entity_type)}"


def _all_type_symbols() -> list[str]:
    return [f"{role}_{t}" for t in ENTITY_TYPES for role in ROLES]


@dataclass(frozen=True)
class SpecialTokens:
    """Concrete vocabulary strings for every marker, blank and type token."""

    head_start: str
    head_end: str
    tail_start: str
    tail_end: str
    head_blank: str
    tail_blank: str
    types: dict[str, str]  # symbol (subj_PERSON) -> vocabulary token
    added: tuple[str, ...]  # tokens that are not in the vocabulary and must be added

    def type_token(self, role: str, entity_type: str | None) -> str:
        return self.types[type_symbol(role, entity_type)]

    @property
    def start_markers(self) -> tuple[str, str]:
        return self.head_start, self.tail_start

    def all_tokens(self) -> list[str]:
        return [
            self.head_start, self.head_end, self.tail_start, self.tail_end,
            self.head_blank, self.tail_blank, *self.types.values(),
        ]

    @classmethod
    def for_vocab(cls, vocab: Iterable[str]) -> "SpecialTokens":
        """Use ``[unusedN]`` slots when the vocabulary has enough of them, else new tokens."""
        vocab_set = set(vocab)
        symbols = _all_type_symbols()
        needed = [f"[unused{i}]" for i in range(6)] + [
            f"[unused{FIRST_TYPE_SLOT + i}]" for i in range(len(symbols))
        ]
        if all(tok in vocab_set for tok in needed):
            types = {s: f"[unused{FIRST_TYPE_SLOT + i}]" for i, s in enumerate(symbols)}
            return cls("[unused0]", "[unused1]", "[unused2]", "[unused3]", "[unused4]", "[unused5]",
                       types, added=())
        types = {s: f"[{s}]" for s in symbols}
        base = ("[E1]", "[/E1]", "[E2]", "[/E2]", "[BLANK_SUBJ]", "[BLANK_OBJ]")
        added = tuple(t for t in (*base, *types.values()) if t not in vocab_set)
        return cls(*base, types, added=added)

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "SpecialTokens":
        """Choose tokens for a Hugging Face tokenizer and register any added ones with it.

        Registering as *special* tokens keeps wordpiece splitting and lower-casing away from them.
        The caller that owns the model must resize its embeddings to ``len(tokenizer)``.
        """
        special = cls.for_vocab(tokenizer.get_vocab())
        # add_tokens(special=True) appends without replacing other special tokens, and keeps the
        # tokens atomic (never split, never lower-cased) in every transformers version we support.
        tokenizer.add_tokens(special.all_tokens(), special_tokens=True)
        return special
