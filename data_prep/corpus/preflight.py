"""What ``recon corpus build`` needs, checked at once before a Ray task runs: the input files, the knowledge
graph (its files, or tables from ``recon kg build``), and an output folder that can be written and is empty
(unless ``--overwrite``). Every problem is named in one refusal (:class:`recon.core.preflight.PreflightError`).
"""
from __future__ import annotations

from pathlib import Path

from recon.core.preflight import Preflight, Problem
from recon.core.storage import is_uri
from recon.data_prep.corpus.config import CorpusBuildConfig


def build_problems(config: CorpusBuildConfig) -> list[Problem]:
    pf = Preflight("")
    if not config.text:
        pf.add("no --text", "give --text FILE: the input lines to link")
    elif not Path(config.text).is_file():
        pf.add(f"--text {config.text} is not a file", "give the input lines (plain text or JSON lines)")
    if not (config.triples or config.wikidata_dump or config.kg):
        pf.add("no knowledge graph", "give --kg TABLES, or --triples FILE and/or --wikidata-dump FILE: without "
                                     "relations no example can be labelled")
    if config.kg and (config.triples or config.aliases or config.wikidata_dump):
        pf.add("both --kg and KG files", "give either --kg TABLES or --triples/--aliases/--wikidata-dump, not both")
    for flag, value in (("--triples", config.triples), ("--aliases", config.aliases),
                        ("--wikidata-dump", config.wikidata_dump)):
        if value and not Path(value).is_file():
            pf.add(f"{flag} {value} is not a file", f"give {flag} an existing file")
    if config.kg and not is_uri(config.kg):
        pf.existing_dir(config.kg, "--kg", "give the folder `recon kg build --out` wrote")
    if not config.out:
        pf.add("no --out", "give --out DIR: where the corpus shards and manifest.json go")
    else:
        out = Path(config.out).expanduser()
        if out.is_dir() and any(out.iterdir()) and not config.overwrite:
            pf.add(f"--out {out} exists and is not empty", "choose another --out or pass --overwrite to replace it")
        pf.writable_dir(out.parent, "the folder of --out")
    return pf.problems


__all__ = ["build_problems"]
