"""``recon data fetch``: download the benchmark files this machine lacks, verified and resumable.

    recon data fetch                      # every freely downloadable dataset
    recon data fetch semeval fewrel --data-dir ~/datasets
    recon data fetch wiki80 --json        # one JSON object per file, for scripts
    recon data fetch --base-url http://mirror.local/raw   # a mirror laid out as <repo>/<commit>/<path>

The ``data`` command group (orchestration/cli/commands/data.py) calls :func:`add_fetch_parser`.
Files already present and verified are skipped; the exit code is 1 if any file failed.
"""
from __future__ import annotations

import argparse
import json
import sys



def add_fetch_parser(data_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``fetch`` to the ``recon data`` sub-commands and return its parser."""
    from recon.data_prep.fetch import DATASETS, DEFAULT_BASE_URL

    parser = data_subparsers.add_parser(
        "fetch",
        help="download missing benchmark files (pinned commits, verified digests)",
        description=(
            "Download the benchmark files missing from the data directory, verify each against its pinned "
            "sha256 or git blob id, and move it into place only once verified. Interrupted downloads resume. "
            f"Datasets: {', '.join(DATASETS)}. TACRED is LDC-licensed and must be supplied by the user."
        ),
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="datasets to fetch (default: all)")
    parser.add_argument("--data-dir", default=None,
                        help="where the dataset folders live (default: $RECON_DATA_DIR, else ../shared/datasets "
                             "if it exists, else ~/.cache/recon/datasets)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL,
                        help="server holding <repository>/<commit>/<path> (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.set_defaults(func=run_fetch)
    return parser


def run_fetch(args: argparse.Namespace) -> int:
    """Handler: fetch, then print a table or JSON; 1 if any file failed."""
    from recon.data_prep.fetch import fetch

    from recon.data_prep.datadir import fetch_target_dir

    data_dir = fetch_target_dir(args.data_dir)
    results = fetch(args.names, data_dir, args.base_url)
    failed = [r for r in results if r.status == "failed"]
    if args.json:
        json.dump({"data_dir": str(data_dir), "base_url": args.base_url,
                   "files": [r.as_dict() for r in results]}, sys.stdout, indent=2)
        print()
    else:
        print(format_table(results))
        print(f"data dir: {data_dir}")
    if failed:
        print(f"recon: {len(failed)} file(s) failed: {', '.join(r.relpath for r in failed)}", file=sys.stderr)
        return 1
    return 0


def format_table(results: list) -> str:
    """One row per file: status, bytes transferred now, final size, verification, notes."""
    import pandas as pd

    frame = pd.DataFrame(
        [{"file": r.relpath, "status": r.status, "bytes": r.bytes,
          "size": "" if r.size is None else r.size, "verification": r.verification or "-",
          "detail": r.detail} for r in results],
        columns=["file", "status", "bytes", "size", "verification", "detail"],
    )
    text = [col for col in frame.columns if col not in ("bytes", "size")]
    widths = {col: max([len(col)] + [len(str(v)) for v in frame[col]]) for col in text}
    return frame.to_string(index=False, justify="left",
                           formatters={col: (lambda v, w=widths[col]: str(v).ljust(w)) for col in text})
