"""Content-addressed publishing into the storage location and a verified per-node cache of what was published.

* **Content addressing.** Published inputs live under ``<namespace>/<sha256>/<name>``: the key
  names the content, so a second publish of identical bytes is a cheap existence check (nothing is
  uploaded), two studies sharing a file share one copy, and a key can never silently change
  meaning. The digest travels with the URI so every consumer can verify what it got.
* **Per-node cache with verification.** Many trials on one node want the same inputs (a corpus, a
  pre-training checkpoint of hundreds of MB); downloading once per node, not per trial, is the
  point. Entries are keyed by digest (``<root>/<sha[:2]>/<sha>/...``), so a cached entry is valid
  forever. Each download goes to a temporary name in the destination directory, is hashed while
  (or right after) it is written, and is renamed into place only if the digest matches: a
  mismatch raises :class:`IntegrityError` naming the URI and both digests and leaves nothing in
  the cache, so a tampered or truncated remote object cannot poison it. Concurrent fetches on
  one node take an exclusive ``fcntl.flock`` per entry (released by the kernel if the holder
  dies, unlike lock files), so one process downloads and the others wait and reuse the result;
  where ``flock`` is unsupported (some network filesystems) the code still stays correct because
  the final step is a rename: the loser of a file race replaces identical bytes atomically, the
  loser of a directory race discards its copy and uses the winner's.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Mapping, Optional, Union

import pyarrow.fs as pafs

from recon.core.hashing import file_sha256
from recon.core.storage import _CHUNK, _NO_FLOCK_ERRNOS, IntegrityError, PathLike, Storage, _copy_files, _rel, _rename_is_atomic, _tmp_name, _uri_basename, default_cache_dir, fs_and_path, logger

try:  # POSIX; elsewhere the renames alone keep the cache correct (see the module docstring)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

# ----------------------------------------------------------------------------- digests

def dir_listing(local_dir: PathLike) -> list[tuple[str, str, int]]:
    """Sorted ``(relative posix path, sha256, size)`` of every file under ``local_dir``."""
    root = Path(local_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    rows = []
    for path in root.rglob("*"):
        if path.is_file():
            rows.append((path.relative_to(root).as_posix(), file_sha256(path), path.stat().st_size))
    return sorted(rows)


def dir_digest(local_dir: PathLike) -> str:
    """sha256 over the sorted ``relative-path TAB file-sha256`` lines (file names and contents)."""
    return _digest_of_listing(dir_listing(local_dir))


def _digest_of_listing(rows) -> str:
    digest = hashlib.sha256()
    for rel, sha, _size in rows:
        digest.update(f"{rel}\t{sha}\n".encode("utf-8"))
    return digest.hexdigest()


def _check_digest(value: str) -> str:
    value = str(value).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"not a sha256 hex digest: {value!r}")
    return value


# ----------------------------------------------------------------------------- publishing

def publish_files(storage: Storage, files: Mapping[str, PathLike], namespace: str) -> dict:
    """Upload each file to ``<namespace>/<sha256>/<name>`` unless already there.

    Returns the manifest ``{name: {"uri", "sha256", "size"}}``. An object already at its
    content-addressed key with the right size is not uploaded again (same key = same digest).
    """
    manifest: dict[str, dict] = {}
    for name, local in files.items():
        if _rel(name) != name or "/" in name:
            raise ValueError(f"file names must be single path components: {name!r}")
        local = Path(local)
        sha, size = file_sha256(local), local.stat().st_size
        rel = _rel(namespace, sha, name)
        if storage.size(rel) != size:
            storage.upload_file(local, rel)
            logger.debug("published %s -> %s", local, storage.join(rel))
        manifest[name] = {"uri": storage.join(rel), "sha256": sha, "size": size}
    return manifest


def publish_dir(storage: Storage, local_dir: PathLike, namespace: str) -> tuple[str, str]:
    """Upload a directory to ``<namespace>/<digest>/`` once; returns ``(uri, digest)``.

    Completion is marked by ``<namespace>/<digest>.json`` (the file listing), written last: a
    publish that died half-way is redone. Where rename is atomic the tree is uploaded under a
    temporary name and moved into place, so the final directory is never seen partial.
    """
    rows = dir_listing(local_dir)
    digest = _digest_of_listing(rows)
    rel, marker = _rel(namespace, digest), _rel(namespace, f"{digest}.json")
    if storage.exists(marker) and storage.exists(rel):
        return storage.join(rel), digest
    fs = storage.filesystem
    if _rename_is_atomic(fs):
        if not storage.exists(rel):
            tmp = _rel(namespace, _tmp_name(digest))
            try:
                storage.upload_dir(local_dir, tmp)
                try:
                    fs.move(storage.path(tmp), storage.path(rel))
                except OSError:
                    if not storage.exists(rel):  # a concurrent publisher won: use its copy
                        raise
            finally:
                storage.delete(tmp)
    else:
        storage.upload_dir(local_dir, rel)
    storage.write_json(marker, {"digest": digest, "files": [
        {"path": p, "sha256": s, "size": n} for p, s, n in rows]})
    return storage.join(rel), digest


# ----------------------------------------------------------------------------- node cache

@contextlib.contextmanager
def _node_lock(lock_path: Path) -> Iterator[bool]:
    """Exclusive ``flock`` on ``lock_path``; yields False (unlocked) where flock is unsupported."""
    if fcntl is None:
        yield False
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError as exc:
            if exc.errno not in _NO_FLOCK_ERRNOS:
                raise
            logger.warning("flock unsupported at %s (%s); relying on atomic renames", lock_path, exc)
            locked = False
        yield locked
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _entry_fields(entry: Union[Mapping, PathLike], sha256: Optional[str]
                  ) -> tuple[str, str, Optional[int]]:
    if isinstance(entry, Mapping):
        uri, size = str(entry["uri"]), entry.get("size")
        listed = entry.get("sha256")
        if listed and sha256 and listed.lower() != sha256.lower():
            raise ValueError(f"conflicting digests for {uri}: entry {listed}, argument {sha256}")
        sha256 = sha256 or listed
    else:
        uri, size = os.fspath(entry), None
    if not sha256:
        raise ValueError(f"no sha256 given for {uri}")
    return uri, _check_digest(sha256), (int(size) if size is not None else None)


def _cached_file_ok(path: Path, size: Optional[int], sha: str, verify: bool) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if size is not None and stat.st_size != size:
        return False
    return not verify or file_sha256(path) == sha


def _download_hashing(fs: pafs.FileSystem, path: str, local: Path) -> str:
    """Stream ``(fs, path)`` into ``local`` and return its sha256, in one pass."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as src, open(local, "wb") as dst:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def fetch_cached(entry: Union[Mapping, PathLike], sha256: Optional[str] = None,
                 cache_dir: Optional[PathLike] = None, *,
                 filesystem: Optional[pafs.FileSystem] = None, verify_cached: bool = False) -> Path:
    """The local path of a published file, downloading it into the node cache at most once.

    ``entry`` is a manifest entry from :func:`publish_files` (its ``sha256``/``size`` are used) or
    a URI with ``sha256``. The file lands at ``cache_dir/<sha[:2]>/<sha>/<name>`` only after its
    digest matched; otherwise :class:`IntegrityError` is raised and the cache is left as it was.
    ``verify_cached`` re-hashes a cache hit (replacing it if it was altered locally).
    """
    uri, sha, size = _entry_fields(entry, sha256)
    name = _uri_basename(uri)
    if not name:
        raise ValueError(f"URI names no file: {uri}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry_dir = root / sha[:2] / sha
    final = entry_dir / name
    if _cached_file_ok(final, size, sha, verify_cached):
        return final
    entry_dir.mkdir(parents=True, exist_ok=True)
    with _node_lock(root / sha[:2] / f"{sha}.lock"):
        if _cached_file_ok(final, size, sha, verify_cached):
            return final  # another process fetched it while we waited
        fs, path = fs_and_path(uri, filesystem)
        tmp = entry_dir / _tmp_name(name)
        try:
            actual = _download_hashing(fs, path, tmp)
            if actual != sha:
                raise IntegrityError(uri, sha, actual)
            os.replace(tmp, final)  # atomic; an unlocked race loser replaces identical bytes
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return final


def fetch_dir(uri: PathLike, digest: str, cache_dir: Optional[PathLike] = None, *,
              filesystem: Optional[pafs.FileSystem] = None, verify_cached: bool = False) -> Path:
    """The local copy of a directory published by :func:`publish_dir`, cached once per node.

    Downloaded into a temporary sibling, verified against ``digest`` (:func:`dir_digest`), then
    renamed to ``cache_dir/<digest[:2]>/<digest>``; a mismatch raises :class:`IntegrityError`
    and leaves no trace. Treat the returned directory as read-only: it is shared by every
    process on the node.
    """
    uri = os.fspath(uri)
    digest = _check_digest(digest)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    parent = root / digest[:2]
    final = parent / digest

    def ok() -> bool:
        return final.is_dir() and (not verify_cached or dir_digest(final) == digest)

    if ok():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    with _node_lock(parent / f"{digest}.lock"):
        if ok():
            return final
        if final.exists():  # altered locally (only reachable with verify_cached): replace it
            shutil.rmtree(final)
        fs, path = fs_and_path(uri, filesystem)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"no directory at {uri}")
        tmp = parent / _tmp_name(digest)
        try:
            tmp.mkdir()
            _copy_files(path, str(tmp), source_filesystem=fs)
            actual = dir_digest(tmp)
            if actual != digest:
                raise IntegrityError(uri, digest, actual, what="directory")
            try:
                os.rename(tmp, final)
            except OSError as exc:  # unlocked race: the winner's verified copy is already there
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final

__all__ = ["dir_digest", "dir_listing", "fetch_cached", "fetch_dir", "publish_dir", "publish_files"]
