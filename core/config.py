"""Typed component configs: each default declared once, with its help text and its constraints.

Every component (the training loop, fine-tuning, the CNN, few-shot, pre-training, the corpus build,
Ray resources) describes its settings as a ``@dataclass`` whose fields are made with :func:`knob`::

    @dataclass
    class CnnTraining(Config):
        lr: float = knob(0.5, "SGD learning rate (Nguyen & Grishman 2015)", gt=0)
        hidden_size: int = knob(230, "convolution filters", ge=1)

From those same fields, and from nothing else,

* the study schema validates a YAML section (pydantic reads stdlib dataclasses; the constraints run
  in ``__post_init__`` and name the field, which the spec loader turns into file/line/field);
* every command-line flag is generated (``recon.orchestration.cli.flags``), so a flag, a spec field
  and a config field cannot disagree;
* :meth:`Config.identity` gives the part of a config that changes results: the trial id is its hash.
  Fields that only say *where* or *how loudly* something runs are declared ``identity=False``. A field
  added after trials were logged, whose default is what ran before it existed, is declared
  ``identity="unless_default"``: it joins the identity only when set to something else, so finished trials
  keep their ids (a store written before it existed is reused, not run again). A field whose default
  is detected on the machine (``factory=``) names that earlier value as ``baseline=``.

Stdlib dataclasses rather than pydantic models keep ``recon.models`` importable with torch and
transformers alone.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import MISSING, field, fields
from typing import Any, Callable, Literal, Optional, Sequence

from recon.core.errors import ReconError

# Metadata keys of a knob's dataclass field.
HELP, CHOICES, BOUNDS, IDENTITY, CLI, POINT, BASELINE = ("help", "choices", "bounds", "identity", "cli", "point",
                                                          "baseline")


class ConfigError(ReconError, ValueError):
    """A config value outside its constraints; ``field`` is its dotted name within the config."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        self.detail = message
        super().__init__(f"{field_name}: {message}")


def knob(default: Any = MISSING, help: str = "", *, factory: Optional[Callable[[], Any]] = None,
         choices: Optional[Sequence[Any]] = None, ge: Any = None, gt: Any = None, le: Any = None,
         lt: Any = None, identity: bool | Literal["unless_default"] = True, cli: bool = True,
         point: Optional[str] = None, baseline: Any = MISSING) -> Any:
    """A config field: its default, one line of help, constraints, and whether it is part of the id.

    ``cli=False`` keeps a field off the generated command line (values set by code, not users).
    ``point`` names the protocol point the field implements (``recon.core.protocol``): a named
    protocol sets it, and its default is the default protocol's value.
    ``baseline``: for ``identity="unless_default"`` with a ``factory`` (a default detected on the machine),
    the value that ran before the field existed; the field joins the identity only when it differs.
    """
    if not help:
        raise TypeError("every config field needs help text")
    metadata = {HELP: help, CHOICES: tuple(choices) if choices is not None else None,
                BOUNDS: {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None},
                IDENTITY: identity, CLI: cli, POINT: point, BASELINE: baseline}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_CHECKS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


class Config:
    """Mixin for component config dataclasses: constraint checks, strict dicts, identity."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Check every field's choices and bounds; raise :class:`ConfigError` naming the field."""
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            meta = f.metadata
            if value is None or not meta:
                continue
            if isinstance(value, float) and not value.is_integer() and f.name in _whole_number_fields(type(self)):
                raise ConfigError(f.name, f"must be a whole number, got {value!r}")
            if meta.get(CHOICES) and value not in meta[CHOICES]:
                raise ConfigError(f.name, f"must be one of {list(meta[CHOICES])}, got {value!r}")
            for bound, limit in (meta.get(BOUNDS) or {}).items():
                ok, sign = _CHECKS[bound]
                items = value if isinstance(value, (list, tuple)) else [value]
                for item in items:
                    if isinstance(item, (int, float)) and not ok(item, limit):
                        raise ConfigError(f.name, f"must be {sign} {limit}, got {item!r}")

    # ------------------------------------------------------------------ dicts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def identity(self) -> dict[str, Any]:
        """The fields that change results (``identity=True``), nested configs included."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            kind = f.metadata.get(IDENTITY, True)
            if not kind:
                continue
            value = getattr(self, f.name)
            if kind == "unless_default":
                baseline = f.metadata.get(BASELINE, MISSING)
                baseline = f.default if baseline is MISSING else baseline
                if baseline is not MISSING and value == baseline:
                    continue
            out[f.name] = value.identity() if isinstance(value, Config) else _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> Any:
        """Build from a plain dict (nested configs too); an unknown key is an error, never dropped."""
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{where}{unknown[0]}", f"unknown field of {cls.__name__} "
                                                     f"(known: {', '.join(sorted(known))})")
        values = {}
        for name, value in data.items():
            nested = config_class(hints[name])
            values[name] = nested.from_dict(value, f"{where}{name}.") if nested and isinstance(value, dict) else value
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc.field}", exc.detail) from None

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@functools.lru_cache(maxsize=None)
def _whole_number_fields(cls: type) -> frozenset[str]:
    """The fields of ``cls`` typed ``int`` (or ``int | None``): a YAML ``8.5`` there is an error, not a batch size."""
    return frozenset(name for name, annotation in typing.get_type_hints(cls).items()
                     if field_type(annotation)[0] is int)


def config_class(annotation: Any) -> Optional[type]:
    """The :class:`Config` subclass an annotation names (``X`` or ``Optional[X]``), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, Config):
            return candidate
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def field_type(annotation: Any) -> tuple[Any, Optional[tuple]]:
    """(python type, choices) of a field annotation; ``X | None`` counts as ``X``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return type(args[0]), tuple(args)
    if origin is dict:
        return dict, None
    if args and origin is not list and origin is not tuple:
        return field_type(args[0])
    if origin in (list, tuple):
        return (origin, args[0] if args else str), None
    return annotation, None


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The dataclass fields of a config class, in declaration order."""
    return list(fields(cls))  # type: ignore[arg-type]


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get(HELP, "")


__all__ = ["Config", "ConfigError", "knob", "config_class", "config_fields", "field_help", "field_type"]
