"""Every command's help shows the defaults the command really uses.

For each command whose flags are generated from a config class, the command is parsed with only its required
values, its config is built exactly as the command builds it, and every flag whose help shows
``(default: X)`` is compared with the value that config holds. Help text is rendered by argparse, so a stray
``%`` in a help string would also fail here (argparse %-formats help).
"""
from __future__ import annotations

import argparse
import re

import pytest

from recon.orchestration.cli.flags import config_from_args
from recon.orchestration.cli.main import build_parser

# the least each command needs to build its config (values the config requires, not defaults)
REQUIRED = {
    ("pretrain",): ["--corpus", "/tmp/corpus", "--out", "/tmp/out"],
    ("corpus", "build"): ["--text", "/tmp/in.txt", "--triples", "/tmp/t.txt", "--out", "/tmp/out"],
    ("corpus", "demo"): ["--out", "/tmp/out"],
    ("kg", "build"): ["--out", "/tmp/out"],
}


def _config_commands(parser: argparse.ArgumentParser, path: tuple = ()):
    """(command path, its parser) for every command with generated config flags."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if "config_flags" in sub._defaults:
                    yield path + (name,), sub
                yield from _config_commands(sub, path + (name,))


def _at(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


COMMANDS = sorted(_config_commands(build_parser()), key=lambda item: item[0])


def test_every_generated_command_is_covered():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"finetune", "fewshot", "pretrain", "corpus build", "corpus demo"} <= names


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_shown_defaults_are_the_values_used(path, parser, capsys):
    help_text = parser.format_help()
    assert "{'" not in help_text  # a % in a help string makes argparse print its namespace dict
    argv = list(path) + REQUIRED.get(path, [])
    args = build_parser().parse_known_args(argv)[0]
    config = config_from_args(args.config_class, args, args.config_flags)
    by_dest = {a.dest: a for a in parser._actions}
    checked = 0
    for dotted in args.config_flags:
        shown = re.search(r"\(default: ([^)]*)\)\s*$", " ".join((by_dest[dotted].help or "").split()))
        used = _at(config, dotted)
        if shown is None or dotted in vars(args) or used is None:  # not shown, given here, or resolved later
            continue                                               # (its help says how, in words)
        assert shown.group(1).replace("%%", "%") == str(used), f"{' '.join(path)} {args.config_flags[dotted]}"
        checked += 1
    assert checked >= 3


def test_fewshot_help_shows_fewshot_training():
    """The case that was wrong: few-shot training is lr 2e-5, 4 episodes a step, 1 epoch, eval batch 64."""
    parser = dict(COMMANDS)[("fewshot",)]
    text = " ".join(parser.format_help().split())
    for flag, value in (("--lr LR", "2e-05"), ("--batch-size BATCH_SIZE", "4"), ("--epochs EPOCHS", "1"),
                        ("--eval-batch-size EVAL_BATCH_SIZE", "64")):
        assert re.search(re.escape(flag) + r" (?:(?! --).)*?\(default: " + re.escape(value) + r"\)", text), flag
