"""Knowledge-graph and alias-table readers: triples files, alias tables and Wikidata JSON dumps.

Accepted inputs (blank lines and lines starting with ``#`` are ignored in the text formats):

- triples: ``head_id relation_id tail_id`` per line, separated by tabs or spaces (exactly 3 fields);
- alias table: ``entity_id<TAB>name1<TAB>name2...`` per line, or JSON lines
  ``{"id": "Q42", "aliases": ["Douglas Adams", ...]}`` (``"names"`` is accepted for ``"aliases"``);
- Wikidata JSON dump (``latest-all.json`` style, ``.gz``/``.bz2`` read transparently): one entity
  per line, the leading ``[``, trailing ``]`` and line-ending ``,`` handled; English label and
  aliases become names, and every claim whose ``mainsnak.datavalue.value`` has an ``id`` becomes a
  triple. Claims with literal values (dates, strings, quantities) are skipped: they link no entity.

Everything is streamed line by line; a bad line raises ``DataError`` with file, line and field.
"""
from __future__ import annotations

import bz2
import gzip
import json
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

from recon.core.errors import DataError, DatasetNotFound

def normalise_name(name: str) -> str:
    """The alias-matching key: NFKC, lowercase, punctuation and white space removed.

    White space goes too, so that a mention matches whatever the tokenisation ("Frye-Field",
    "Frye - Field" and "frye field" all give "fryefield"; "U.S." gives "us").
    """
    text = unicodedata.normalize("NFKC", name).lower()
    return "".join(ch for ch in text if not ch.isspace() and not unicodedata.category(ch).startswith("P"))


def normalise_title(title: str) -> str:
    """The sitelink-matching key of a Wikipedia page title, as MediaWiki compares them.

    Underscores are spaces, runs of white space are one space, a ``#section`` is dropped and the
    first character is upper case (``"douglas_Adams#Life"`` -> ``"Douglas Adams"``).
    """
    text = unicodedata.normalize("NFC", title).split("#", 1)[0].replace("_", " ")
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def _open(path: Path) -> IO[str]:
    if not path.is_file():
        raise DatasetNotFound(f"{path} does not exist")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with _open(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                yield lineno, stripped


def parse_triple_line(line: str, *, path, lineno: int) -> tuple[str, str, str]:
    parts = line.split()
    if len(parts) != 3:
        raise DataError(f"expected 3 fields (head relation tail), found {len(parts)}",
                        path=path, line=lineno, field="triple")
    return parts[0], parts[1], parts[2]


def parse_alias_line(line: str, *, path, lineno: int) -> tuple[str, list[str]]:
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", path=path, line=lineno) from exc
        entity = record.get("id") if isinstance(record, dict) else None
        if not isinstance(entity, str) or not entity:
            raise DataError("missing or empty entity id", path=path, line=lineno, field="id")
        names = record.get("aliases", record.get("names"))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError("expected a list of strings", path=path, line=lineno, field="aliases")
        return entity, names
    parts = [p.strip() for p in line.split("\t")]
    if len(parts) < 2 or not parts[0]:
        raise DataError("expected entity_id<TAB>name[<TAB>name...]", path=path, line=lineno, field="aliases")
    return parts[0], [p for p in parts[1:] if p]


def read_triples(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """Yield ``(head_id, relation_id, tail_id)`` from a whitespace-separated triples file."""
    path = Path(path)
    for lineno, line in _lines(path):
        yield parse_triple_line(line, path=path, lineno=lineno)


def read_aliases(path: str | Path) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(entity_id, names)`` from a TSV or JSON-lines alias table (detected per line)."""
    path = Path(path)
    for lineno, line in _lines(path):
        yield parse_alias_line(line, path=path, lineno=lineno)


@dataclass(frozen=True)
class WikidataEntity:
    id: str
    names: tuple[str, ...]
    triples: tuple[tuple[str, str, str], ...]
    sitelink: str | None = None


def read_wikidata_dump(path: str | Path, language: str = "en", *, relations=None,
                       site: str = "enwiki") -> Iterator[WikidataEntity]:
    """Stream a Wikidata JSON dump: one entity per line inside a JSON array (``wikidata.parse_dump_line``)."""
    from recon.data_prep.corpus.wikidata import parse_dump_line

    path = Path(path)
    for lineno, line in _lines(path):
        rows = parse_dump_line(line, path=path, line=lineno, languages=(language,), relations=relations, site=site)
        if rows is not None:
            yield WikidataEntity(rows.id, rows.names, rows.statements, rows.sitelink)


@dataclass
class KnowledgeGraph:
    """Relations between entity pairs and the normalised-alias -> entity table used for linking."""

    relations: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    alias_index: dict[str, tuple[str, ...]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # entity id -> first (display) name
    sitelinks: dict[str, str] = field(default_factory=dict)  # normalised Wikipedia title -> entity id

    def entity_for_title(self, title: str) -> str | None:
        """The entity whose Wikipedia page has this title (a link target), else ``None``."""
        return self.sitelinks.get(normalise_title(title))

    def relations_between(self, head: str, tail: str) -> tuple[str, ...]:
        return self.relations.get((head, tail), ())

    def lookup(self, surface: str) -> tuple[str, ...]:
        """Entities whose normalised alias equals the normalised ``surface`` (several = ambiguous)."""
        return self.alias_index.get(normalise_name(surface), ())

    @property
    def num_triples(self) -> int:
        return sum(len(r) for r in self.relations.values())

    @classmethod
    def build(
        cls,
        triples: Iterable[tuple[str, str, str]] = (),
        aliases: Iterable[tuple[str, Iterable[str]]] = (),
        sitelinks: Iterable[tuple[str, str]] = (),
    ) -> "KnowledgeGraph":
        relations: dict[tuple[str, str], set[str]] = defaultdict(set)
        for head, relation, tail in triples:
            relations[(head, tail)].add(relation)
        alias_index: dict[str, set[str]] = defaultdict(set)
        names: dict[str, str] = {}
        for entity, entity_names in aliases:
            for name in entity_names:
                key = normalise_name(name)
                if key:
                    alias_index[key].add(entity)
                    names.setdefault(entity, name)
        return cls(
            {k: tuple(sorted(v)) for k, v in relations.items()},
            {k: tuple(sorted(v)) for k, v in alias_index.items()},
            names,
            {normalise_title(title): entity for title, entity in sitelinks},
        )

    @classmethod
    def from_files(
        cls,
        triples: str | Path | None = None,
        aliases: str | Path | None = None,
        wikidata_dump: str | Path | None = None,
    ) -> "KnowledgeGraph":
        """Read a triples file, an alias table and/or a Wikidata dump into one graph."""
        all_triples: list[tuple[str, str, str]] = []
        all_aliases: list[tuple[str, list[str]]] = []
        all_sitelinks: list[tuple[str, str]] = []
        if triples is not None:
            all_triples.extend(read_triples(triples))
        if aliases is not None:
            all_aliases.extend(read_aliases(aliases))
        if wikidata_dump is not None:
            for entity in read_wikidata_dump(wikidata_dump):
                all_triples.extend(entity.triples)
                all_aliases.append((entity.id, list(entity.names)))
                if entity.sitelink:
                    all_sitelinks.append((entity.sitelink, entity.id))
        return cls.build(all_triples, all_aliases, all_sitelinks)
