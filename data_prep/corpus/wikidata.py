"""One line of a Wikidata JSON dump -> the rows of the knowledge-graph tables (no I/O, no Ray).

The dump (``latest-all.json[.gz|.bz2]``) is one JSON array with one entity per line: ``[`` on the
first line, ``]`` on the last, every entity line ending in ``,``. :func:`parse_dump_line` takes one
such line and returns ``None`` for the array brackets and blank lines, else an :class:`EntityRows`:

- ``statements``: ``(head, relation, tail)`` for every claim whose main snak is entity-valued
  (``datavalue.type == "wikibase-entityid"``: ``value.id``, or ``Q``/``P`` + ``numeric-id`` in old
  dumps), restricted to ``relations`` when given; literal values (dates, strings, quantities) and
  ``somevalue``/``novalue`` snaks link no entity and are skipped;
- ``names``: labels, then aliases, in the order of ``languages`` (English by default); the first one
  is the entity's display name;
- ``sitelink``: the title of the entity's page on ``site`` (``enwiki``), or ``None``.

Records of ``type`` ``property`` or ``lexeme`` give no names and no sitelink (a property's label
"country" must not make the item "country" ambiguous); their statements are kept. A bad line raises
:class:`DataError` naming the file, the line and the field, which callers skip and count or raise
(``on_error``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Optional

from recon.core.errors import DataError

SKIP_NAMES_TYPES = ("property", "lexeme")


@dataclass(frozen=True)
class EntityRows:
    id: str
    names: tuple[str, ...]
    statements: tuple[tuple[str, str, str], ...]
    sitelink: Optional[str] = None
    dropped_statements: int = 0  # entity-valued claims outside ``relations``


def entity_value(snak: object) -> str | None:
    """The target entity id of an entity-valued snak, else ``None``."""
    if not isinstance(snak, dict) or not isinstance(snak.get("datavalue"), dict):
        return None
    value = snak["datavalue"].get("value")
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("id"), str):
        return value["id"]
    numeric, kind = value.get("numeric-id"), value.get("entity-type")
    if isinstance(numeric, int) and kind in ("item", "property"):
        return ("Q" if kind == "item" else "P") + str(numeric)
    return None


def _values(container: object, language: str, *, path, line, field: str, many: bool) -> list[str]:
    entry = container.get(language) if isinstance(container, dict) else None
    if entry is None:
        return []
    entries = entry if many else [entry]
    if many and not isinstance(entry, list):
        raise DataError("expected a list", path=path, line=line, field=f"{field}.{language}")
    out = []
    for item in entries:
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            raise DataError("expected {'value': str}", path=path, line=line, field=f"{field}.{language}")
        out.append(item["value"])
    return out


def parse_dump_line(text: str, *, path: str | Path, line: int, languages: Collection[str] = ("en",),
                    relations: Optional[Collection[str]] = None, site: str = "enwiki") -> EntityRows | None:
    """Rows of one dump line (see the module docstring); ``None`` for ``[``, ``]`` and blank lines."""
    stripped = text.strip()
    if not stripped or stripped in ("[", "]") or stripped.startswith("#"):
        return None
    stripped = stripped.rstrip(",")
    try:
        record = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", path=path, line=line) from exc
    if not isinstance(record, dict):
        raise DataError("expected one JSON object per line", path=path, line=line)
    entity = record.get("id")
    if not isinstance(entity, str) or not entity:
        raise DataError("missing or empty entity id", path=path, line=line, field="id")
    for key in ("labels", "aliases", "claims", "sitelinks"):
        if not isinstance(record.get(key, {}), dict):
            raise DataError("expected an object", path=path, line=line, field=key)
    labels, aliases = record.get("labels", {}), record.get("aliases", {})
    names: list[str] = []
    for language in languages:
        names.extend(_values(labels, language, path=path, line=line, field="labels", many=False))
    for language in languages:
        names.extend(_values(aliases, language, path=path, line=line, field="aliases", many=True))
    sitelink = None
    link = record.get("sitelinks", {}).get(site)
    if link is not None:
        if not isinstance(link, dict) or not isinstance(link.get("title"), str):
            raise DataError("expected {'title': str}", path=path, line=line, field=f"sitelinks.{site}")
        sitelink = link["title"]
    if record.get("type") in SKIP_NAMES_TYPES:
        names, sitelink = [], None
    statements, dropped = [], 0
    for prop, claims in record.get("claims", {}).items():
        if not isinstance(claims, list):
            raise DataError("expected a list of statements", path=path, line=line, field=f"claims.{prop}")
        for claim in claims:
            if not isinstance(claim, dict):
                raise DataError("expected a statement object", path=path, line=line, field=f"claims.{prop}")
            target = entity_value(claim.get("mainsnak"))
            if target is None:
                continue
            if relations is not None and prop not in relations:
                dropped += 1
                continue
            statements.append((entity, prop, target))
    return EntityRows(entity, tuple(names), tuple(statements), sitelink, dropped)


__all__ = ["EntityRows", "entity_value", "parse_dump_line"]
