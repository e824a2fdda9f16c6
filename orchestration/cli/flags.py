"""Command-line flags generated from config fields, as transformers' ``HfArgumentParser`` does.

    flags = add_config_arguments(parser, FinetuneConfig, nested={"data": "", "training": "", "cnn": "cnn-"})
    cfg = config_from_args(FinetuneConfig, args, flags)

Every flag is a config field (``--lr`` is ``training.lr``, ``--cnn-hidden-size`` is ``cnn.hidden_size``):
its type, choices, default and help come from the field, so a flag cannot disagree with the config
or with the study spec, which validates the same fields. Flags default to "not given"
(``argparse.SUPPRESS``), so an omitted flag leaves the config's own default in force, including
defaults that depend on other fields (the pre-training batch size of each objective).
"""
from __future__ import annotations

import argparse
import json
import re
import dataclasses
import typing
from dataclasses import MISSING
from typing import Any, Optional, Sequence

from recon.core.config import CLI, Config, ConfigError, config_class, field_help, field_type
from recon.core.protocol import DEFAULT_PROTOCOL, PROTOCOL_NAMES, point_fields, protocol_layer

Flags = dict[str, str]  # dotted config path -> flag ("training.lr" -> "--lr")
PROTOCOL_DEST = "protocol"  # --protocol NAME: a layer of protocol point values under the flags given


def _help(f: dataclasses.Field, instance: Any) -> str:
    """The field's help and ``(default: X)``, X the value the command's config really has when the flag is
    omitted: read from an instance, so a nested config's own defaults (few-shot training's lr 2e-5, not the
    loop's 3e-5) show. A field declared None is resolved from other fields and its help says how in words,
    unless this command's config fixes it (few-shot's metric: accuracy), which then replaces the words."""
    text = field_help(f)
    if f.default is MISSING:
        return text
    value = getattr(instance, f.name) if instance is not None else f.default
    if value is None:
        return text
    return re.sub(r"\s*\(default: [^)]*\)$", "", text) + f" (default: {value})"


def _instance(cls: type) -> Any:
    try:
        return cls()
    except (TypeError, ConfigError):  # a config with required fields: its declared defaults are shown
        return None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", path: str = "",
                         nested: Optional[dict[str, str]] = None, skip: Sequence[str] = (),
                         aliases: Optional[dict[str, Sequence[str]]] = None, flags: Optional[Flags] = None,
                         instance: Any = None) -> Flags:
    """Add one flag per field of ``cls`` (nested configs flattened with ``nested[name]`` as prefix).

    ``skip`` names dotted paths left off this command (set by the command itself); ``aliases``
    gives extra spellings of a flag (``{"input_format": ["--format"]}``). Shown defaults come from
    ``instance`` (default: ``cls()``), the config an omitted flag leaves in force.
    """
    flags = {} if flags is None else flags
    if instance is None and not path:
        instance = _instance(cls)
    nested = nested or {}
    aliases = aliases or {}
    hints = typing.get_type_hints(cls)
    if not path and any(True for _ in point_fields(cls)):
        parser.add_argument("--protocol", dest=PROTOCOL_DEST, choices=list(PROTOCOL_NAMES), default=argparse.SUPPRESS,
                            help=f"set every protocol point below to a named protocol's value (recon: recon's "
                                 f"choices, authors: the authors' code's; a flag given explicitly wins; default: "
                                 f"{DEFAULT_PROTOCOL})")
    for f in dataclasses.fields(cls):
        dotted = f"{path}{f.name}"
        if dotted in skip or not f.metadata.get(CLI, True):
            continue
        sub = config_class(hints[f.name])
        if sub is not None:
            add_config_arguments(parser, sub, prefix=prefix + nested.get(dotted, f"{f.name}-"), path=f"{dotted}.",
                                 nested=nested, skip=skip, aliases=aliases, flags=flags,
                                 instance=getattr(instance, f.name) if instance is not None else None)
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        if flag in flags.values():
            raise ValueError(f"{cls.__name__}.{f.name}: flag {flag} is already taken by another field")
        kind, choices = field_type(hints[f.name])
        kwargs: dict[str, Any] = {"dest": dotted, "default": argparse.SUPPRESS,
                                  # argparse %-formats help: a literal % ("~6% slower") must be doubled
                                  "help": _help(f, instance).replace("%", "%%")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(type=json.loads, metavar="JSON")
        elif isinstance(kind, tuple):
            kwargs.update(nargs="+", type=kind[1], metavar=f.name.upper())
        else:
            kwargs["type"] = kind if kind in (int, float) else str
            kwargs["metavar"] = f.name.upper()
            if choices or f.metadata.get("choices"):
                kwargs["choices"] = list(choices or f.metadata["choices"])
                kwargs.pop("metavar")
        parser.add_argument(flag, *aliases.get(dotted, ()), **kwargs)
        flags[dotted] = flag
    return flags


def raw_defaults(cls: type) -> dict[str, Any]:
    """Field defaults before any resolution (nested configs as dicts), to merge overrides into."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
            out[f.name] = value.to_dict() if isinstance(value, Config) else value
    return out


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def given(args: argparse.Namespace, flags: Flags) -> dict[str, Any]:
    """The config values the user gave on the command line, as a nested dict."""
    out: dict[str, Any] = {}
    for dotted in flags:
        if dotted in vars(args):
            node = out
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = getattr(args, dotted)
    return out


def config_from_args(cls: type, args: argparse.Namespace, flags: Flags, **fixed: Any) -> Any:
    """Build ``cls`` from its defaults, ``--protocol``'s values, the flags given, and ``fixed`` values set by
    the command (each layer over the one before)."""
    base = raw_defaults(cls)
    if getattr(args, PROTOCOL_DEST, None):
        base = _merge(base, protocol_layer(cls, getattr(args, PROTOCOL_DEST)))
    values = _merge(_merge(base, given(args, flags)), fixed)
    try:
        return cls.from_dict(values)
    except ConfigError as exc:
        flag = flags.get(exc.field)
        raise ConfigError(flag or exc.field, exc.detail) from None


__all__ = ["add_config_arguments", "config_from_args", "raw_defaults", "given", "Flags"]
