"""Named protocols: the authors' choices and recon's, point by point, as one table.

recon reproduces Peng et al. (2020). Run side by side with the authors' code (thunlp/RE-Context-or-Names),
the same data, encoder and seeds gave different numbers for reasons that are choices, not bugs. Each
choice is a *point*; a *protocol* names one value per point:

=======================  ==============================================  ====================================
point                    ``recon``                                       ``authors``
=======================  ==============================================  ====================================
adam_bias_correction     AdamW with bias correction (torch)              no bias correction (transformers
                                                                         3.0.2 ``AdamW(correct_bias=False)``)
placeholder_markers      OnlyC / C+T / OnlyT: the placeholder alone,     the placeholder inside the entity
                         read there                                      markers, read at the start marker
truncation               ``window``: keep both entities                  ``cut``: first max_length pieces,
                                                                         positions clamped to the last one
head_dropout             0.1 before the linear layer                     none
head_init                ``normal``: N(0, 0.02), zero bias (BERT's)      ``torch``: nn.Linear's default
scorer                   ``recon``: micro-F1 without the negative class  ``official``: the benchmark's own
                                                                         scorer (SemEval-2010 Task 8:
                                                                         macro-F1, 9 types, direction)
=======================  ==============================================  ====================================

Each point is an ordinary config field of the component that uses it (``TrainConfig.adam_bias_correction``,
``DataOptions.truncation``, ``HeadOptions.dropout``...), declared with ``knob(..., point="truncation")``;
its default is :func:`point_default` (the :data:`DEFAULT_PROTOCOL`'s value). A protocol is therefore a
small diff over the defaults, applied like a ``defaults:`` layer: ``--protocol authors`` on a command,
``protocol: authors`` in a study or sweep, :func:`protocol_layer` in code. A field set explicitly wins over
the protocol, so one deviation can be studied at a time. Trial ids hash the resolved fields, never the
protocol's name: two ways of asking for the same settings are the same trial.

Which protocol a resolved config follows is derived, never stored (:func:`describe`): ``authors``,
``recon``, or ``authors, except truncation=window``.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Iterator

PROTOCOL_NAMES = ("recon", "authors")


@dataclass(frozen=True)
class Point:
    """One deviation between the protocols: its values and what it does."""

    name: str
    help: str
    values: dict[str, Any]


POINTS: dict[str, Point] = {p.name: p for p in (
    Point("adam_bias_correction",
          "Adam's bias correction of the moment estimates (recon: on, as torch's AdamW; authors: off, as "
          "transformers 3.0.2's AdamW(correct_bias=False): early updates are larger, about 6.5x at step 16)",
          {"recon": True, "authors": False}),
    Point("placeholder_markers",
          "OnlyC / C+T / OnlyT keep the entity markers around the placeholder and read the relation at the start "
          "markers (authors), or replace the marked span by the placeholder alone and read it there (recon)",
          {"recon": False, "authors": True}),
    Point("truncation",
          "inputs longer than max_length: window (keep both entities whole) or cut (the first max_length word "
          "pieces, [SEP] dropped, positions clamped to the last piece: the authors')",
          {"recon": "window", "authors": "cut"}),
    Point("head_dropout",
          "dropout before the classifier's linear layer (recon 0.1; authors none)",
          {"recon": 0.1, "authors": 0.0}),
    Point("head_init",
          "classifier initialisation: normal (N(0, 0.02) weights, zero bias: BERT's) or torch (nn.Linear's default: "
          "the authors')",
          {"recon": "normal", "authors": "torch"}),
    Point("scorer",
          "the score tables report: recon (micro-F1 without the negative class; accuracy for Wiki80) or official "
          "(each benchmark's own scorer where it has one: SemEval-2010 Task 8 v1.2 macro-F1 over 9 relation types "
          "with direction; recon's elsewhere). Both are logged; model selection uses micro-F1 in both",
          {"recon": "recon", "authors": "official"}),
)}

# New studies and commands follow recon's protocol; README "Protocol" gives the measurements behind it.
DEFAULT_PROTOCOL = "recon"


def point_default(point: str) -> Any:
    """The default value of ``point``: the :data:`DEFAULT_PROTOCOL`'s."""
    return POINTS[point].values[DEFAULT_PROTOCOL]


def check_protocol(name: str) -> str:
    if name not in PROTOCOL_NAMES:
        from recon.core.errors import ReconError

        raise ReconError(f"unknown protocol {name!r}; known protocols: {', '.join(PROTOCOL_NAMES)}")
    return name


def point_fields(cls: type, path: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted path, point)`` of every field of config class ``cls`` (nested configs included) that
    implements a protocol point."""
    from recon.core.config import POINT, config_class

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = config_class(hints[f.name])
        if sub is not None:
            yield from point_fields(sub, f"{path}{f.name}.")
        elif f.metadata.get(POINT):
            yield f"{path}{f.name}", f.metadata[POINT]


def protocol_layer(cls: type, name: str) -> dict[str, Any]:
    """The nested dict of ``cls``'s point fields set to protocol ``name``'s values (a layer to merge under
    a user's own values)."""
    check_protocol(name)
    layer: dict[str, Any] = {}
    for dotted, point in point_fields(cls):
        node = layer
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = POINTS[point].values[name]
    return layer


def point_values(config: Any) -> dict[str, Any]:
    """``{dotted path: value}`` of every protocol point field of a config instance."""
    out = {}
    for dotted, _ in point_fields(type(config)):
        value = config
        for part in dotted.split("."):
            value = getattr(value, part)
        out[dotted] = value
    return out


def describe(config: Any) -> str:
    """Which protocol a resolved config follows: ``authors``, ``recon`` or ``authors, except truncation=window``."""
    values = {dotted: (value, point) for (dotted, value), (_, point) in
              zip(point_values(config).items(), point_fields(type(config)))}
    if not values:
        return DEFAULT_PROTOCOL
    best, best_diff = DEFAULT_PROTOCOL, None
    for name in PROTOCOL_NAMES:
        diff = [f"{dotted}={value}" for dotted, (value, point) in values.items() if POINTS[point].values[name] != value]
        if best_diff is None or len(diff) < len(best_diff):
            best, best_diff = name, diff
    return best if not best_diff else f"{best}, except {', '.join(best_diff)}"


__all__ = ["POINTS", "Point", "PROTOCOL_NAMES", "DEFAULT_PROTOCOL", "point_default", "protocol_layer",
           "point_fields", "point_values", "describe", "check_protocol"]
