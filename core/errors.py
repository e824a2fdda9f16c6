"""Errors that point at the bad input: file, line (or record index) and field."""
from __future__ import annotations

from pathlib import Path


class ReconError(Exception):
    """Base class for errors shown to users as one paragraph (no traceback unless --debug)."""


class Refused(ReconError):
    """A command that stopped before it computed or wrote anything (a preflight problem, data it cannot get):
    the console removes the log it opened for the run, so nothing half-written is left behind."""


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


def read_json_object(path: str | Path, what: str = "the file") -> dict:
    """A JSON object file (manifests, records) parsed, or a :class:`DataError` naming the file and line: not
    UTF-8, invalid JSON, nested too deeply, or not an object ("{what} is damaged"). A missing file raises
    ``FileNotFoundError`` for the caller to explain."""
    import json

    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (byte {exc.start}); {what} is damaged", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from None
    except RecursionError:
        raise DataError(f"JSON nested too deeply; {what} is damaged", path=path) from None
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got {type(value).__name__}", path=path)
    return value


class DatasetNotFound(ReconError):
    """A dataset or file that recon looked for and could not find."""
