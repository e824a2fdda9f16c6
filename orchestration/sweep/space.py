"""A sweep's search space: a config field BY PATH (``pretrain.p_blank``, ``finetune.training.lr``) and its domain.

Domains: ``uniform(a, b)``, ``loguniform(a, b)``, ``randint(a, b)`` (inclusive) and ``choice([...])``;
each candidate value (each choice, both bounds of a range) is checked by the config class's own
constraints when the sweep is loaded.
"""
from __future__ import annotations

import re
import typing
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict

from recon.core.config import config_class
from recon.models.pretrain.config import PretrainConfig
from recon.models.train.finetune_config import FinetuneConfig

SECTIONS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}
DOMAIN_RE = re.compile(r"^\s*(uniform|loguniform|randint|choice)\s*\((.*)\)\s*$", re.S)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Domain(_Strict):
    """One dimension of the search space: ``kind`` and its arguments, parsed from the YAML string."""

    kind: Literal["uniform", "loguniform", "randint", "choice"]
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[list[Any]] = None

    @classmethod
    def parse(cls, value: Any) -> "Domain":
        if isinstance(value, list):  # a bare list is a choice
            return cls(kind="choice", choices=value)
        match = DOMAIN_RE.match(str(value)) if isinstance(value, str) else None
        if not match:
            raise ValueError(f"{value!r} is not a domain: use uniform(a, b), loguniform(a, b), randint(a, b) "
                             "or choice([x, y, ...])")
        kind, inner = match.groups()
        try:
            args = yaml.safe_load(f"[{inner}]")
        except yaml.YAMLError:
            raise ValueError(f"{value!r}: cannot read the arguments {inner!r}") from None
        if kind == "choice":
            if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
                raise ValueError(f"{value!r}: choice takes one non-empty list, e.g. choice([256, 2048])")
            if any(isinstance(c, (list, dict)) for c in args[0]):
                raise ValueError(f"{value!r}: choices must be numbers, strings or booleans")
            return cls(kind="choice", choices=[_number(c) for c in args[0]])
        args = [_number(a) for a in args]  # YAML 1.1 reads 1e-5 (no dot) as a string
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ValueError(f"{value!r}: {kind} takes two numbers (low, high)")
        low, high = args
        if not low < high:
            raise ValueError(f"{value!r}: low must be below high")
        if kind == "loguniform" and low <= 0:
            raise ValueError(f"{value!r}: loguniform needs low > 0")
        if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
            raise ValueError(f"{value!r}: randint takes integers")
        return cls(kind=kind, low=low, high=high)

    def candidates(self) -> list[Any]:
        """The values whose validity stands for the whole domain: each choice, or both bounds."""
        if self.kind == "choice":
            return list(self.choices or [])
        if self.kind == "randint":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def optuna(self):
        """The Optuna distribution of this domain."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices or []))
        if self.kind == "randint":
            return IntDistribution(int(self.low), int(self.high))
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "loguniform")

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice({self.choices})"
        return f"{self.kind}({self.low:g}, {self.high:g})"


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value) if re.fullmatch(r"[+-]?\d+", value) else float(value)
        except ValueError:
            return value
    return value


def field_of(path: str) -> tuple[type, Any]:
    """The config class and dataclass field a dotted path names (``finetune.training.lr``), or ValueError."""
    import dataclasses

    section, *parts = path.split(".")
    if section not in SECTIONS or not parts:
        raise ValueError(f"a search path starts with {' or '.join(f'{s}.' for s in SECTIONS)} and names a field "
                         "(e.g. pretrain.p_blank, finetune.training.lr)")
    cls: type = SECTIONS[section]
    for i, part in enumerate(parts):
        known = {f.name: f for f in dataclasses.fields(cls)}
        if part not in known:
            where = ".".join([section, *parts[:i]])
            raise ValueError(f"{cls.__name__} ({where}) has no field {part!r}; known: {', '.join(sorted(known))}")
        f = known[part]
        nested = config_class(typing.get_type_hints(cls)[part])
        if i == len(parts) - 1:
            if nested is not None:
                raise ValueError(f"{path} is a section ({nested.__name__}); search one of its fields")
            return cls, f
        if nested is None:
            raise ValueError(f"{'.'.join([section, *parts[:i + 1]])} is not a section")
        cls = nested
    raise AssertionError("unreachable")


__all__ = ["Domain", "field_of", "SECTIONS", "DOMAIN_RE"]
