"""``recon``: the one command-line entry point.

    recon data stats --dataset semeval
    recon data split --dataset semeval --fraction 0.01 --seed 42 --json
    recon data render --dataset semeval --format C+M --limit 3

Errors a user can fix (bad files, unknown names, missing data) are printed as one paragraph and
exit non-zero; ``--debug`` shows the traceback as well.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Sequence

from recon.data_prep.errors import ReconError

from .commands import COMMAND_MODULES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recon",
        description="Relation-extraction studies (Peng et al., 2020) on Ray, tracked in MLflow.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except ReconError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"recon: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("recon: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
