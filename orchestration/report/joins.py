"""How the report joins predictions with each other and with test examples, and says what it could not join.

Every prediction is keyed by its example's portable identity (``semeval/test.txt:12``,
:func:`recon.data_prep.example.portable_source`), whichever machine wrote it: ``predictions.jsonl``
from this recon holds the identity already, one from an older recon holds the absolute path the
trial read (often its node's cache, ``<home>/.cache/recon/storage/data/<digest>/semeval/test.txt:12``)
and maps to the same identity here. Test examples are found through
:class:`recon.data_prep.example.ExampleIndex`. An analysis that cannot join an example never drops
it silently: it logs :func:`unjoined_message` (the report's console) and puts the count in its page.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from recon.data_prep.example import portable_source

SAMPLE = 3  # sources named in an "could not be joined" message


def read_predictions(path: Path) -> dict[str, dict]:
    """Portable identity of the example (or the line number, when a row has no source) -> prediction row.

    The row's ``source`` is rewritten to the identity, so whatever an analysis writes from it
    (samples, per-example CSVs, the error browser) names no directory of the machine that ran the trial.
    """
    rows = {}
    with Path(path).open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if line.strip():
                row = json.loads(line)
                key = portable_source(str(row["source"])) if row.get("source") is not None else str(i)
                rows[key] = {**row, "source": key}
    return rows


def unjoined_message(part: str, missing: int, total: int, what: str, why: str, sources: Sequence[str] = ()) -> str:
    """``"<part>: 12 of 300 <what> could not be joined (<why>); e.g. a, b, c"``: one line for the console."""
    sample = f"; e.g. {', '.join(list(sources)[:SAMPLE])}" if sources else ""
    return f"{part}: {missing} of {total} {what} could not be joined ({why}){sample}"


__all__ = ["read_predictions", "unjoined_message"]
