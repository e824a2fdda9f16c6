"""Layered YAML specs with located errors: what studies and sweeps share.

A spec file may start from others (``defaults: other.yaml`` or a list, relative to the file; mappings
merge key by key, lists and scalars are replaced), and a named protocol is one more layer under the
file's own values (:func:`with_protocol`). Every key and item keeps its file and line, so a validation
error names file, line and field (:func:`validation_problems`); a YAML bomb, a python tag or text that
is not UTF-8 is a located :class:`SpecError`, not a hang or a raw exception.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from recon.core.config import ConfigError
from recon.core.errors import ReconError
from recon.core.protocol import DEFAULT_PROTOCOL, PROTOCOL_NAMES, protocol_layer


class SpecError(ReconError):
    """A spec file that does not validate; the message names file, field path and line."""


MAX_YAML_NODES = 100_000  # a study file is a few hundred values; more means aliases nested like a YAML bomb


def compose_lines(text: str, path: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML and record the 1-based line of every key/item, by field path."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[tuple, int] = {}
    budget = [MAX_YAML_NODES]

    def walk(n: yaml.Node, at: tuple) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise SpecError(f"{path}, line {n.start_mark.line + 1}: the YAML expands to more than {MAX_YAML_NODES} "
                            "values (anchors and aliases nested like a 'billion laughs' bomb?)")
        if isinstance(n, yaml.MappingNode):
            first_seen: dict[Any, int] = {}
            for key, value in n.value:
                line = key.start_mark.line + 1
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in first_seen:  # PyYAML keeps the last silently: a pasted block would win
                        field = ".".join(str(p) for p in at + (key.value,))
                        raise SpecError(f"{path}, line {line}, field '{field}': duplicate key (first set on line "
                                        f"{first_seen[key.value]}); keep one of them")
                    first_seen[key.value] = line
                lines[at + (key.value,)] = line
                walk(value, at + (key.value,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[at + (i,)] = item.start_mark.line + 1
                walk(item, at + (i,))

    if node is not None:
        walk(node, ())
    return data, lines


def merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for key, value in override.items():
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def read_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict, dict[tuple, int]]]:
    """The study file and its ``defaults:`` ancestors, most general first."""
    if path in seen:
        raise SpecError(f"{path}: 'defaults' chain loops back to this file")
    if not path.is_file():
        raise SpecError(f"{path}: study file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}); save the study file as UTF-8") from None
    data, lines = compose_lines(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}, line 1: a study file must be a YAML mapping")
    layers: list[tuple[Path, dict, dict[tuple, int]]] = []
    parents = data.pop("defaults", None)
    for parent in [parents] if isinstance(parents, str) else (parents or []):
        layers.extend(read_layers((path.parent / parent).resolve(), seen + (path,)))
    layers.append((path, data, lines))
    return layers


def locate(loc: tuple, layers: list[tuple[Path, dict, dict[tuple, int]]]) -> tuple[Path, Optional[int]]:
    """The file (last layer that sets it) and line of the deepest known prefix of ``loc``."""
    for depth in range(len(loc), 0, -1):
        prefix = tuple(loc[:depth])
        for path, _, lines in reversed(layers):
            if prefix in lines:
                return path, lines[prefix]
    return layers[-1][0], None


def _unwrap(annotation: Any) -> list[Any]:
    """The classes a value of ``annotation`` may be (Optional/Union/list/dict/Annotated peeled off)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is None:
        return [annotation]
    args = typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset):
        return _unwrap(args[0]) if args else []
    if origin is dict:
        return _unwrap(args[1]) if len(args) == 2 else []
    return [c for a in args for c in _unwrap(a)]  # Union / Optional


def _field_types(cls: Any) -> dict[str, Any]:
    if isinstance(cls, type) and hasattr(cls, "model_fields"):  # a pydantic model
        return {name: f.annotation for name, f in cls.model_fields.items()}
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}
    return {}


def field_names_at(model: Any, loc: tuple) -> list[str]:
    """The field names the schema ``model`` accepts in the mapping at ``loc`` (list indices and dict keys
    pass through), for a "did you mean" on an unknown key; [] when the place is not a known mapping."""
    candidates = [model]
    for part in loc:
        step: list[Any] = []
        for cls in candidates:
            types = _field_types(cls)
            if isinstance(part, str) and part in types:
                step.extend(_unwrap(types[part]))
            else:  # a list index or a dict key: the element type was unwrapped already
                step.append(cls)
        candidates = step
    return sorted({name for cls in candidates for name in _field_types(cls)})


def validation_problems(exc: ValidationError, layers: list, schema: str, model: Any = None) -> list[str]:
    """pydantic's errors as ``file, line N, field 'a.b': message`` (component configs name their own field); an
    unknown key near a known one (``traning``) gets a "did you mean" from the ``model`` schema."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            message = f"unknown field (not in the {schema} schema)"
            known = field_names_at(model, loc[:-1]) if model is not None and loc else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6) if loc else []
            if close:
                message += f"; did you mean '{close[0]}'?"
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):  # a component config's own check names its field
            loc = loc + tuple(int(p) if p.isdigit() else p for p in cause.field.split("."))
            message = cause.detail
        where_file, line = locate(loc, layers)
        field = ".".join(str(p) for p in loc) or f"({schema})"
        at = f"{where_file}, line {line}" if line else f"{where_file}"
        problems.append(f"{at}, field '{field}': {message}")
    return problems


def with_protocol(merged: dict, sections: dict[str, type]) -> dict:
    """``merged`` over the layer its ``protocol:`` names: each section's protocol point fields set to the
    protocol's values where the file does not set them. ``sections`` maps a top-level key (``data``), a
    dotted one (``fewshot.settings``: only when ``fewshot`` is there) or ``key.*`` (every entry of a
    mapping: the pre-training stages) to the config class found there."""
    name = merged.get("protocol", DEFAULT_PROTOCOL)
    if name not in PROTOCOL_NAMES:
        return merged  # validation names the field
    layer: dict = {}
    for where, cls in sections.items():
        head, _, rest = where.partition(".")
        if rest == "*":
            entries = merged.get(head)
            if isinstance(entries, dict):
                layer[head] = {key: protocol_layer(cls, name) for key in entries}
        elif rest:
            if isinstance(merged.get(head), dict):
                layer.setdefault(head, {})[rest] = protocol_layer(cls, name)
        else:
            layer[head] = protocol_layer(cls, name)
    return merge(layer, merged)


def merged_layers(path: Path) -> tuple[dict, list]:
    """The file and its ``defaults:`` ancestors merged (most general first), and the layers for locating."""
    layers = read_layers(Path(path).resolve())
    merged: dict = {}
    for _, data, _ in layers:
        merged = merge(merged, data)
    return merged, layers


__all__ = ["SpecError", "MAX_YAML_NODES", "compose_lines", "merge", "read_layers", "locate", "validation_problems",
           "field_names_at", "with_protocol", "merged_layers"]
