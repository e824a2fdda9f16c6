"""``recon export CHECKPOINT --to DIR``: a recon checkpoint as a plain Hugging Face model directory.

    recon export runs/cp/final --to exported/cp-bert     # then AutoModel.from_pretrained("exported/cp-bert")

See ``recon.orchestration.pretrain.export`` for what is written (config, safetensors weights, tokenizer with the
marker tokens, a README on building the relation representation).
"""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a recon checkpoint (e.g. CP) as a plain Hugging Face model directory",
        description="Write CHECKPOINT's encoder as config.json + model.safetensors + tokenizer (marker tokens "
                    "registered) + README.md, loadable with transformers.AutoModel.from_pretrained(DIR) without recon.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a recon checkpoint directory (has recon.json)")
    parser.add_argument("--to", required=True, metavar="DIR", dest="to", help="output directory")
    parser.add_argument("--force", action="store_true", help="write into a non-empty DIR")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from recon.core.preflight import Preflight
    from recon.orchestration.pretrain.export import describe, export_checkpoint

    pf = Preflight("recon export")
    pf.existing_dir(args.checkpoint, "CHECKPOINT", "give a recon checkpoint folder (it holds recon.json), e.g. "
                    "<pretrain --out>/<run>/final/<digest>", marker="recon.json")
    pf.writable_dir(args.to, "--to")
    pf.raise_if_any()
    out = export_checkpoint(args.checkpoint, args.to, force=args.force)
    print(json.dumps(describe(out)))
    return 0
