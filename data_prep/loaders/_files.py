"""How a dataset file is found and opened: the one place that looks at what a path is and how its bytes come out.

Why one place: a split file that is a folder (``mkdir train.txt``) or a broken link used to be taken for "no such
file" and left out without a word, and a gzip file (``train.txt.gz``, or gzip bytes under the name ``train.txt``)
was either not found or reported as "not UTF-8". Here:

* :func:`not_a_file` says what a path is when it is there but cannot be read as a file ("is a folder, not a
  file", "is a broken link to X"); :func:`find_data_file` raises it as a :class:`DataError`, and finds
  ``NAME.gz`` where ``NAME`` is absent (both present is an error: which one is meant is not ours to guess).
* :func:`open_binary`, :func:`open_text` and :func:`read_bytes` decompress any file that starts with the gzip
  magic bytes, whatever its name, so every loader reads compressed and plain files alike; a damaged gzip file
  is a DataError naming it.
"""
from __future__ import annotations

import gzip
import io
import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, TextIO

from recon.core.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
GZIP_SUFFIX = ".gz"


def not_a_file(path: Path) -> str | None:
    """What ``path`` is when it exists (or dangles) but is not a regular file; None for a file or nothing."""
    if path.is_symlink() and not path.exists():
        return f"is a broken link to {os.readlink(path)}"
    if path.is_dir():
        return "is a folder, not a file"
    if path.exists() and not path.is_file():
        return "is not a regular file (a device, pipe or socket)"
    return None


def locate_data_file(path: Path) -> tuple[Path | None, str | None]:
    """``(file, None)`` for ``path`` or, where it is absent, ``path.gz``; ``(None, None)`` when neither is there;
    ``(None, why)`` when what is there cannot be read (``why`` names the path, for a message)."""
    zipped = path.with_name(path.name + GZIP_SUFFIX)
    for candidate in (path, zipped):
        problem = not_a_file(candidate)
        if problem:
            return None, f"{candidate}: {problem}"
    if path.is_file() and zipped.is_file():
        return None, (f"{path} and {zipped} are both here: remove one (or move it away) so that it is clear which "
                      "is read")
    for candidate in (path, zipped):
        if candidate.is_file():
            return candidate, None
    return None, None


def find_data_file(path: str | Path) -> Path | None:
    """``path``, else ``path.gz``, else None; a folder, broken link or both copies there is a DataError."""
    found, problem = locate_data_file(Path(path))
    if problem:
        raise DataError(problem)
    return found


def check_readable(path: Path) -> None:
    """A DataError naming ``path`` when it is a folder, a broken link or not there at all."""
    problem = not_a_file(path)
    if problem:
        raise DataError(problem, path=path)
    if not path.exists():
        raise DataError("does not exist", path=path)


def is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(GZIP_MAGIC)) == GZIP_MAGIC


@contextmanager
def open_binary(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes, gunzipped when it starts with the gzip magic; decompression errors (also those met
    while the caller reads) become a DataError naming the file."""
    check_readable(path)
    compressed = is_gzip(path)
    try:
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as handle:
            yield handle
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        if not compressed:
            raise
        raise DataError(f"is gzip-compressed but cannot be decompressed ({exc}): the file is truncated or "
                        "damaged; copy it again", path=path) from None


@contextmanager
def open_text(path: Path) -> Iterator[TextIO]:
    """Lines of UTF-8 text (a byte order mark dropped; bytes that are not UTF-8 kept as surrogates for the
    caller to locate), gunzipped when compressed."""
    with open_binary(path) as raw:
        yield io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape")


def read_bytes(path: Path) -> bytes:
    """The whole file's bytes, gunzipped when compressed."""
    with open_binary(path) as handle:
        return handle.read()
