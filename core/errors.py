"""Errors that point at the bad input: file, line (or record index) and field."""
from __future__ import annotations

from pathlib import Path


class ReconError(Exception):
    """Base class for errors shown to users as one paragraph (no traceback unless --debug)."""


class DataError(ReconError):
    """Bad input data, located as precisely as the file format allows.

    ``line`` is the 1-based line of a JSON-lines file; ``record`` is the 0-based index of a record
    inside a JSON array or dict (TACRED, FewRel), used when a line number does not exist.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        record: int | str | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.record = record
        self.field = field
        self.reason = message
        where = []
        if self.path:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if record is not None:
            where.append(f"record {record}")
        if field:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class DatasetNotFound(ReconError):
    """A dataset or file that recon looked for and could not find."""
