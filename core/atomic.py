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


def umask_mode(kind: str = "file") -> int:
    """The mode a new file (0o666) or folder (0o777) gets under this process's umask: 0o644 / 0o755 by default,
    so a lab's group can read results. ``tempfile`` makes its files 0o600; what recon keeps is re-moded."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o666 if kind == "file" else 0o777) & ~mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling and a rename (mode as the umask gives it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_texts_or_keep(out_dir: str | os.PathLike, files: dict[str, str]) -> tuple[Path, str | None]:
    """Write ``files`` (name -> text) into ``out_dir``; when that fails (a full disk, a folder gone read-only
    after the run started), write them into a new folder of the system's temporary directory instead, so
    what was computed is never lost. Returns where they are and the error that moved them (None if none)."""
    try:
        for name, text in files.items():
            write_text_atomic(Path(out_dir) / name, text)
        return Path(out_dir), None
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    kept = Path(tempfile.mkdtemp(prefix="recon-unsaved-"))
    os.chmod(kept, umask_mode("dir"))
    for name, text in files.items():
        write_text_atomic(kept / name, text)
    return kept, error


def publish_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished directory ``tmp`` to ``target``, replacing an older one.

    The old directory is renamed aside first and removed after the swap, so ``target`` is always
    either the complete old or the complete new directory. It gets the umask's mode, not mkdtemp's 0700.
    """
    tmp, target = Path(tmp), Path(target)
    os.chmod(tmp, umask_mode("dir"))  # made by mkdtemp (0700): readable by the lab as the umask allows
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, trash)
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target
