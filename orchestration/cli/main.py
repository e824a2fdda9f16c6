"""``recon``: the one command-line entry point; one module per command group in ``commands/``.

    recon data stats|split|check|render|fetch ...    # datasets: counts, seeded subsets, what the encoder sees
    recon finetune --dataset semeval --split 0.1     # one supervised run, one JSON line
    recon fewshot --dataset fewrel --n-way 5 --k-shot 1
    recon corpus build|stats|demo ...                # the CP/MTB pre-training corpus (Ray Data)
    recon pretrain --objective cp --corpus DIR       # CP / MTB pre-training on Ray Train
    recon study plan|run|resume|tables studies/paper.yaml
    recon ui studies/demo.yaml                       # MLflow UI for a study's store

The flags of ``finetune``, ``fewshot``, ``pretrain``, ``corpus build`` and ``corpus demo`` are
generated from their config classes (``recon.orchestration.cli.flags``). Errors a user can fix (bad
files, unknown names, missing data, a value outside its config constraints) are printed as one
paragraph and exit 2; anything else is caught too (an ``OSError`` names its file, exit 2; an unexpected
exception is one paragraph saying it is a bug, exit 70), so no traceback reaches a user unless ``--debug``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Sequence

from recon.core.errors import ReconError

from recon.orchestration.cli.commands import COMMAND_MODULES


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
    except OSError as exc:  # a file or folder the system refused: the user's to fix, named
        if args.debug:
            traceback.print_exc()
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"recon: error: {exc.strerror or exc}{where}; rerun with --debug for the traceback", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the safety net: a paragraph, not a traceback, unless --debug
        if args.debug:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"recon: internal error: {type(exc).__name__}: {first}. This is a bug in recon, not in your input; "
              "rerun with --debug for the traceback and report it.", file=sys.stderr)
        return 70
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
