"""One storage location shared by the driver and every Ray worker node, plus a verified per-node cache.

Ray clusters whose nodes share no disk can only exchange files through a location every node can
reach: the same ``storage_path`` Ray Train/Tune persist checkpoints to (a local or NFS path,
``s3://...``, ``gs://...``). This module is the thin, study-agnostic layer over it.

Why each choice:

* **Resolution exactly as Ray does it.** Ray 2.60 turns ``storage_path`` into a
  ``(pyarrow.fs.FileSystem, path)`` pair with ``pyarrow.fs.FileSystem.from_uri`` (its
  ``get_fs_and_path``, or an explicit ``storage_filesystem`` whose path is already
  prefix-stripped). That helper lives in ``ray.train._internal.storage`` (and a copy in
  ``ray.train.v2._internal``): private, already duplicated once, and importing it drags in Ray
  Train. It is a three-line wrapper, so :func:`fs_and_path` reimplements the same contract instead
  of importing a private symbol; whatever URI Ray accepts, this module accepts, with the same
  filesystem. Ray's ``copy_files`` workaround (no upload threads to S3, 64 MiB chunks) is copied too.
* **Atomic writes.** Trials on many nodes read what the driver (or another trial) writes, possibly
  while it is being written, and a crash must never leave a truncated JSON. Where a rename is
  atomic (local/NFS, HDFS, pyarrow's mock fs) the payload goes to a hidden temporary name in the
  *same* directory and is then moved over the final name (POSIX ``rename`` replaces atomically).
  On object stores a "move" is copy+delete, but a single PUT of the final key is already atomic
  (readers see the old object or the new one, never a part), so the payload is buffered fully
  and written to the final key in one go, only once the writer finished without an exception.

Publishing files content-addressed into it and fetching them into a verified per-node cache is
``recon.core.node_cache``.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import posixpath
import re
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Union
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

STORAGE_ENV = "RECON_STORAGE"
CACHE_ENV = "RECON_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/recon/storage"

#: Prefix of in-flight temporary names; :meth:`Storage.list` hides them.
TMP_MARKER = ".recon-tmp."
_CHUNK = 8 * 1024 * 1024
_COPY_CHUNK = 64 * 1024 * 1024  # Ray's chunk size for checkpoint transfers
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_RENAME_ATOMIC = {"local", "mock", "hdfs"}
_NO_FLOCK_ERRNOS = {errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS,
                    getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}

PathLike = Union[str, "os.PathLike[str]"]


class IntegrityError(RuntimeError):
    """Downloaded content does not match its expected sha256 digest."""

    def __init__(self, uri: str, expected: str, actual: str, what: str = "file"):
        self.uri, self.expected, self.actual = uri, expected, actual
        super().__init__(f"sha256 mismatch for {what} {uri}: expected {expected}, got {actual}; "
                         "the cached copy was not written")


# ----------------------------------------------------------------------------- resolution

def is_uri(value: str) -> bool:
    """``scheme://...`` (``file://``, ``s3://``, ``gs://``, ``mock://``) rather than a plain path."""
    return bool(_URI_RE.match(value))


def resolve_storage(value: Optional[PathLike], default: PathLike) -> str:
    """The storage URI: ``value``, else ``$RECON_STORAGE``, else ``default``.

    Plain paths are expanded and made absolute (workers do not share the driver's cwd); they stay
    plain paths, which Ray's ``storage_path`` accepts as they are. URIs (``file://``, ``s3://``,
    ``gs://``, ...) are returned unchanged. Empty strings count as unset.
    """
    for candidate in (value, os.environ.get(STORAGE_ENV), default):
        if candidate is None or str(candidate).strip() == "":
            continue
        text = os.fspath(candidate).strip()
        if is_uri(text):
            return text
        return os.path.abspath(os.path.expanduser(text))
    raise ValueError("no storage location: value, $RECON_STORAGE and default are all empty")


def fs_and_path(uri: PathLike, filesystem: Optional[pafs.FileSystem] = None
                ) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a storage URI, with Ray's ``get_fs_and_path`` contract.

    With an explicit ``filesystem`` the value is already a path on it (prefix-stripped), as with
    Ray's ``storage_filesystem``; otherwise ``pyarrow.fs.FileSystem.from_uri`` resolves it.
    Relative plain paths are made absolute first (pyarrow rejects them).
    """
    text = os.fspath(uri)
    if filesystem is not None:
        return filesystem, text
    if not is_uri(text):
        text = os.path.abspath(os.path.expanduser(text))
    fs, path = pafs.FileSystem.from_uri(text)
    return fs, _strip_path(path)


def default_cache_dir() -> Path:
    """The per-node cache root: ``$RECON_CACHE_DIR`` or ``~/.cache/recon/storage`` (absolute)."""
    return Path(os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)))


def _strip_path(path: str) -> str:
    return path if path == "/" else path.rstrip("/")


def _rel(*parts: str) -> str:
    """Normalise relative parts to ``a/b/c``; refuse anything that would escape the root."""
    pieces: list[str] = []
    for part in parts:
        for piece in str(part).replace("\\", "/").split("/"):
            if piece in ("", "."):
                continue
            if piece == "..":
                raise ValueError(f"'..' is not allowed in storage paths: {parts!r}")
            pieces.append(piece)
    return "/".join(pieces)


def _fs_join(root: str, rel: str) -> str:
    if not rel:
        return root
    if not root:
        return rel
    return root.rstrip("/") + "/" + rel if root != "/" else "/" + rel


def _uri_join(uri: str, rel: str) -> str:
    if not rel:
        return uri
    if not is_uri(uri):
        return posixpath.join(uri, rel)
    parts = urlsplit(uri)  # keep query options such as ?region=... on every derived URI
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + rel))


def _uri_basename(uri: str) -> str:
    return posixpath.basename((urlsplit(uri).path if is_uri(uri) else uri).rstrip("/"))


def _rename_is_atomic(fs: pafs.FileSystem) -> bool:
    if isinstance(fs, pafs.SubTreeFileSystem):
        return _rename_is_atomic(fs.base_fs)
    return fs.type_name in _RENAME_ATOMIC


def _copy_files(source: str, destination: str, source_filesystem=None,
                destination_filesystem=None) -> None:
    """``pyarrow.fs.copy_files`` with Ray's settings (see ``ray.train._internal.storage``)."""
    kwargs: dict[str, Any] = {"chunk_size": _COPY_CHUNK}
    if getattr(destination_filesystem, "type_name", None) == "s3":
        kwargs["use_threads"] = False  # apache/arrow#32372: threaded S3 uploads are unsafe
    pafs.copy_files(source, destination, source_filesystem=source_filesystem or pafs.LocalFileSystem(),
                    destination_filesystem=destination_filesystem or pafs.LocalFileSystem(), **kwargs)


def _tmp_name(name: str) -> str:
    return f"{TMP_MARKER}{name}.{os.getpid()}.{uuid.uuid4().hex[:12]}"


# ----------------------------------------------------------------------------- Storage

class Storage:
    """A root on a pyarrow filesystem; every method takes paths relative to that root.

    ``Storage.from_uri(uri)`` is the normal constructor. ``Storage(fs, root)`` wraps a custom
    filesystem (Ray's ``storage_filesystem`` convention): its :attr:`uri` and :meth:`join` then
    return paths on that filesystem, to be resolved with the same ``filesystem=``.
    """

    def __init__(self, filesystem: pafs.FileSystem, root: str, uri: Optional[str] = None):
        self.filesystem = filesystem
        self.root = _strip_path(str(root))
        self.uri = uri if uri is not None else self.root
        self._from_uri = False

    @classmethod
    def from_uri(cls, uri: PathLike) -> "Storage":
        """Resolve ``uri`` (plain path, ``file://``, ``s3://``, ...) as Ray resolves storage_path."""
        text = os.fspath(uri)
        if is_uri(text):
            parts = urlsplit(text)
            text = urlunsplit(parts._replace(path=_strip_path(parts.path))) if parts.path else text
        else:
            text = _strip_path(os.path.abspath(os.path.expanduser(text)))
        fs, path = fs_and_path(text)
        storage = cls(fs, path, uri=text)
        storage._from_uri = True
        return storage

    def __repr__(self) -> str:
        return f"Storage({self.uri!r}, fs={self.filesystem.type_name})"

    def __reduce__(self):
        # Shipped to Ray workers: re-resolve the URI there (credentials come from the worker's
        # environment, as with Ray's storage_path) instead of pickling a configured filesystem.
        if self._from_uri:
            return (Storage.from_uri, (self.uri,))
        return (Storage, (self.filesystem, self.root, self.uri))

    # paths ---------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The filesystem path (not URI) of ``parts`` under the root."""
        return _fs_join(self.root, _rel(*parts))

    def join(self, *parts: str) -> str:
        """The URI of ``parts`` under the root (resolvable with :func:`fs_and_path`)."""
        return _uri_join(self.uri, _rel(*parts))

    def _info(self, rel: str) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.path(rel))

    def exists(self, rel: str = "") -> bool:
        return self._info(rel).type != pafs.FileType.NotFound

    def size(self, rel: str) -> Optional[int]:
        """Size in bytes of a file, None when it does not exist (or is a directory)."""
        info = self._info(rel)
        return info.size if info.type == pafs.FileType.File else None

    def _ensure_parent(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if parent and parent != path:
            self.filesystem.create_dir(parent, recursive=True)

    # reading / writing ----------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        with self.filesystem.open_input_stream(self.path(rel)) as stream:
            return stream.read()

    def read_text(self, rel: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(rel).decode(encoding)

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_text(rel))

    @contextlib.contextmanager
    def open_atomic(self, rel: str) -> Iterator[Any]:
        """A binary writer whose content appears at ``rel`` all at once, or not at all.

        If the block raises, the previous content (if any) is untouched and no temporary is left.
        """
        path = self.path(rel)
        if not _rel(rel):
            raise ValueError("cannot write to the storage root itself")
        self._ensure_parent(path)
        fs = self.filesystem
        if _rename_is_atomic(fs):
            tmp = posixpath.join(posixpath.dirname(path), _tmp_name(posixpath.basename(path)))
            stream = fs.open_output_stream(tmp)
            try:
                yield stream
                stream.close()
                fs.move(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    stream.close()
                with contextlib.suppress(Exception):
                    fs.delete_file(tmp)
                raise
        else:
            # Object store: buffer, then one write of the final key once the block succeeded.
            # (Opening the output stream earlier would risk committing a part on error, since
            # Arrow's S3 stream completes the upload when it is destroyed.)
            buffer = io.BytesIO()
            yield buffer
            data = buffer.getvalue()
            with fs.open_output_stream(path) as stream:
                stream.write(data)

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_atomic(rel) as stream:
            stream.write(data)

    def write_text(self, rel: str, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(rel, text.encode(encoding))

    def write_json(self, rel: str, obj: Any, indent: Optional[int] = 2) -> None:
        # serialise before opening anything: an unserialisable object writes nothing
        self.write_text(rel, json.dumps(obj, indent=indent, sort_keys=True) + "\n")

    # listing / trees ----------------------------------------------------------
    def list(self, rel_prefix: str = "") -> list[str]:
        """Files under ``rel_prefix`` (recursive), as sorted paths relative to the root.

        A prefix naming a file lists that file; a missing prefix lists nothing. In-flight
        temporaries of atomic writes are hidden.
        """
        base = self.path(rel_prefix)
        info = self.filesystem.get_file_info(base)
        if info.type == pafs.FileType.File:
            infos = [info]
        elif info.type == pafs.FileType.NotFound:
            return []
        else:
            infos = self.filesystem.get_file_info(
                pafs.FileSelector(base, recursive=True, allow_not_found=True))
        out = []
        root = self.root.rstrip("/") + "/" if self.root not in ("", "/") else self.root
        for item in infos:
            if item.type != pafs.FileType.File or item.base_name.startswith(TMP_MARKER):
                continue
            path = item.path
            out.append(path[len(root):] if root and path.startswith(root) else path.lstrip("/"))
        return sorted(out)

    def upload_file(self, local_path: PathLike, rel: str) -> None:
        """Copy one local file to ``rel``; atomic (temporary + move) where rename is atomic."""
        path = self.path(rel)
        self._ensure_parent(path)
        if _rename_is_atomic(self.filesystem):
            tmp = posixpath.join(posixpath.dirname(path), _tmp_name(posixpath.basename(path)))
            try:
                _copy_files(os.fspath(local_path), tmp, destination_filesystem=self.filesystem)
                self.filesystem.move(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.filesystem.delete_file(tmp)
                raise
        else:
            _copy_files(os.fspath(local_path), path, destination_filesystem=self.filesystem)

    def upload_dir(self, local_dir: PathLike, rel: str) -> None:
        """Copy a local directory's contents to ``rel`` (not atomic; see :func:`publish_dir`)."""
        local = Path(local_dir)
        if not local.is_dir():
            raise NotADirectoryError(f"not a directory: {local}")
        path = self.path(rel)
        self.filesystem.create_dir(path, recursive=True)
        _copy_files(str(local), path, destination_filesystem=self.filesystem)

    def download_dir(self, rel: str, local_dir: PathLike) -> Path:
        """Copy the contents of ``rel`` into ``local_dir`` (created); returns ``local_dir``."""
        path = self.path(rel)
        if self.filesystem.get_file_info(path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"no directory at {self.join(rel)}")
        local = Path(local_dir)
        local.mkdir(parents=True, exist_ok=True)
        _copy_files(path, str(local), source_filesystem=self.filesystem)
        return local

    def delete(self, rel: str) -> bool:
        """Delete a file or a directory tree; False when there was nothing to delete."""
        if not _rel(rel):
            raise ValueError("refusing to delete the storage root")
        path = self.path(rel)
        info = self.filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return False
        if info.type == pafs.FileType.Directory:
            self.filesystem.delete_dir(path)
        else:
            self.filesystem.delete_file(path)
        return True



__all__ = ["Storage", "IntegrityError", "is_uri", "resolve_storage", "fs_and_path", "default_cache_dir",
           "STORAGE_ENV", "CACHE_ENV", "DEFAULT_CACHE_DIR", "TMP_MARKER"]
