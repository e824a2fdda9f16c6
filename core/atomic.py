"""Writing files and directories so that a reader never sees half of them.

Trials, caches and checkpoints are read by other processes (Ray workers, a resumed driver) while
they may be written: everything goes to a temporary sibling first and is renamed into place, which
is atomic on one file system. A failure removes the temporary and re-raises.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def publish_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished directory ``tmp`` to ``target``, replacing an older one.

    The old directory is renamed aside first and removed after the swap, so ``target`` is always
    either the complete old or the complete new directory.
    """
    tmp, target = Path(tmp), Path(target)
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, trash)
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target
