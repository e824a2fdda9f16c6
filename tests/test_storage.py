"""Shared storage + verified per-node cache (recon.core.storage), on real filesystems.

Local paths use pyarrow's LocalFileSystem; the URI code path is exercised with ``file://`` URIs,
pyarrow's in-memory mock filesystem and a SubTreeFileSystem.
"""
from __future__ import annotations

import errno
import multiprocessing as mp
import os
import pickle
import shutil
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from recon.core.hashing import file_sha256

from recon.core import node_cache as nc
from recon.core import storage as st
from recon.core.storage import IntegrityError, Storage, default_cache_dir, fs_and_path, resolve_storage
from recon.core.node_cache import dir_digest, fetch_cached, fetch_dir, publish_dir, publish_files


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _no_temps(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(st.TMP_MARKER)]


# ----------------------------------------------------------------------------- resolution

def test_resolve_storage_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(st.STORAGE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_storage(None, Path("runs")) == str(tmp_path / "runs")      # default, absolute
    monkeypatch.setenv(st.STORAGE_ENV, "s3://bucket/prefix?region=eu-west-1")
    assert resolve_storage(None, "runs") == "s3://bucket/prefix?region=eu-west-1"  # env over default
    assert resolve_storage("gs://b/x", "runs") == "gs://b/x"                  # explicit over env
    assert resolve_storage("rel/dir", "runs") == str(tmp_path / "rel" / "dir")
    assert resolve_storage("file:///shared/nfs", "runs") == "file:///shared/nfs"
    monkeypatch.setenv(st.STORAGE_ENV, "")                                    # empty = unset
    assert resolve_storage("", "runs") == str(tmp_path / "runs")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_storage("~/store", "runs") == str(tmp_path / "home" / "store")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(st.CACHE_ENV, raising=False)
    assert default_cache_dir() == tmp_path / ".cache" / "recon" / "storage"
    monkeypatch.setenv(st.CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"


def test_fs_and_path_matches_pyarrow(tmp_path):
    fs, path = fs_and_path(f"file://{tmp_path}/a/")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/a"
    mock = pafs._MockFileSystem()
    assert fs_and_path("bucket/x", mock) == (mock, "bucket/x")  # Ray's storage_filesystem contract


# ----------------------------------------------------------------------------- Storage basics

def _storages(tmp_path):
    mock = pafs._MockFileSystem()
    mock.create_dir("bucket/root")
    (tmp_path / "sub").mkdir()
    subtree = pafs.SubTreeFileSystem(str(tmp_path / "sub"), pafs.LocalFileSystem())
    return {
        "path": Storage.from_uri(tmp_path / "plain"),
        "file-uri": Storage.from_uri(f"file://{tmp_path}/uri/"),
        "mock": Storage(mock, "bucket/root"),
        "subtree": Storage(subtree, "root"),
    }


@pytest.mark.parametrize("kind", ["path", "file-uri", "mock", "subtree"])
def test_round_trip(tmp_path, kind):
    store = _storages(tmp_path)[kind]
    store.write_text("a/b/c.txt", "héllo")
    store.write_json("meta.json", {"x": [1, 2]})
    store.write_bytes("a/raw.bin", b"\x00\x01")
    assert store.read_text("a/b/c.txt") == "héllo"
    assert store.read_json("meta.json") == {"x": [1, 2]}
    assert store.read_bytes("a/raw.bin") == b"\x00\x01"
    assert store.exists("a/b/c.txt") and store.exists("a") and not store.exists("nope")
    assert store.size("a/raw.bin") == 2 and store.size("nope") is None
    assert store.list() == ["a/b/c.txt", "a/raw.bin", "meta.json"]
    assert store.list("a") == ["a/b/c.txt", "a/raw.bin"]
    assert store.list("a/raw.bin") == ["a/raw.bin"] and store.list("missing") == []
    assert store.delete("a/b") and not store.exists("a/b/c.txt") and not store.delete("a/b")
    assert store.list() == ["a/raw.bin", "meta.json"]


def test_uri_join_resolves_back(tmp_path):
    store = Storage.from_uri(f"file://{tmp_path}/s")
    store.write_text("x/y.txt", "v")
    uri = store.join("x", "y.txt")
    assert uri == f"file://{tmp_path}/s/x/y.txt"
    fs, path = fs_and_path(uri)
    assert fs.open_input_stream(path).read() == b"v"
    plain = Storage.from_uri(str(tmp_path / "p") + "/")
    assert plain.uri == str(tmp_path / "p") and plain.join("a/b") == str(tmp_path / "p" / "a" / "b")
    again = pickle.loads(pickle.dumps(store))  # rebuilt from the URI on the other side
    assert again.uri == store.uri and again.read_text("x/y.txt") == "v"


def test_relative_paths_cannot_escape_root(tmp_path):
    store = Storage.from_uri(tmp_path)
    with pytest.raises(ValueError):
        store.write_text("../evil.txt", "x")
    with pytest.raises(ValueError):
        store.delete("")


# ----------------------------------------------------------------------------- atomic writes

def test_atomic_write_leaves_no_temp(tmp_path):
    store = Storage.from_uri(tmp_path)
    for i in range(3):
        store.write_text("state.json", f"v{i}")
    assert os.listdir(tmp_path) == ["state.json"] and store.read_text("state.json") == "v2"


@pytest.mark.parametrize("kind", ["path", "mock", "object-store"])
def test_crash_mid_write_keeps_old_content(tmp_path, monkeypatch, kind):
    store = _storages(tmp_path)["mock" if kind == "object-store" else kind]
    if kind == "object-store":  # buffered single-put branch (S3/GCS)
        monkeypatch.setattr(st, "_rename_is_atomic", lambda fs: False)
    store.write_text("d/state.txt", "old")
    with pytest.raises(RuntimeError, match="boom"):
        with store.open_atomic("d/state.txt") as out:
            out.write(b"half of the new cont")
            raise RuntimeError("boom")
    assert store.read_text("d/state.txt") == "old"
    infos = store.filesystem.get_file_info(pafs.FileSelector(store.path("d"), recursive=True))
    assert [i.base_name for i in infos] == ["state.txt"]  # no temporary left behind
    store.write_text("d/state.txt", "new")
    assert store.read_text("d/state.txt") == "new"


def test_unserialisable_json_writes_nothing(tmp_path):
    store = Storage.from_uri(tmp_path)
    store.write_json("m.json", {"ok": 1})
    with pytest.raises(TypeError):
        store.write_json("m.json", {"bad": object()})
    assert store.read_json("m.json") == {"ok": 1} and os.listdir(tmp_path) == ["m.json"]


def test_list_hides_inflight_temporaries(tmp_path):
    store = Storage.from_uri(tmp_path)
    with store.open_atomic("a.txt") as out:
        out.write(b"x")
        assert store.list() == []  # the temporary exists but is not listed
    assert store.list() == ["a.txt"]


def test_upload_download_dir(tmp_path):
    src = tmp_path / "src"
    (src / "n").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "n" / "b.bin").write_bytes(b"b" * 1000)
    for store in (Storage.from_uri(tmp_path / "store"), _storages(tmp_path)["mock"]):
        store.upload_dir(src, "ckpt/1")
        assert store.list("ckpt") == ["ckpt/1/a.txt", "ckpt/1/n/b.bin"]
        out = store.download_dir("ckpt/1", tmp_path / f"out-{store.filesystem.type_name}")
        assert _tree(out) == ["a.txt", "n/b.bin"] and (out / "n" / "b.bin").read_bytes() == b"b" * 1000
        with pytest.raises(FileNotFoundError):
            store.download_dir("ckpt/missing", tmp_path / "x")


# ----------------------------------------------------------------------------- publish / fetch files

@pytest.fixture
def inputs(tmp_path):
    d = tmp_path / "inputs"
    d.mkdir()
    (d / "train.jsonl").write_text('{"id": 1}\n' * 50)
    (d / "vocab.txt").write_text("a\nb\n")
    return {"train.jsonl": d / "train.jsonl", "vocab.txt": d / "vocab.txt"}


def test_publish_files_manifest_and_idempotence(tmp_path, inputs, monkeypatch):
    store = Storage.from_uri(tmp_path / "store")
    manifest = publish_files(store, inputs, "data/semeval")
    sha = file_sha256(inputs["train.jsonl"])
    assert manifest["train.jsonl"] == {
        "uri": str(tmp_path / "store" / "data" / "semeval" / sha / "train.jsonl"),
        "sha256": sha, "size": inputs["train.jsonl"].stat().st_size}
    assert store.list() == sorted(f"data/semeval/{e['sha256']}/{n}" for n, e in manifest.items())
    mtimes = {p: os.stat(store.path(p)).st_mtime_ns for p in store.list()}

    uploads = []
    real = Storage.upload_file
    monkeypatch.setattr(Storage, "upload_file", lambda self, *a: (uploads.append(a), real(self, *a)))
    assert publish_files(store, inputs, "data/semeval") == manifest
    assert uploads == [] and {p: os.stat(store.path(p)).st_mtime_ns for p in store.list()} == mtimes

    inputs["vocab.txt"].write_text("a\nb\nc\n")  # new content -> new key, old one kept
    changed = publish_files(store, inputs, "data/semeval")
    assert len(uploads) == 1 and changed["vocab.txt"]["sha256"] != manifest["vocab.txt"]["sha256"]
    assert len(store.list()) == 3
    with pytest.raises(ValueError):
        publish_files(store, {"a/b": inputs["vocab.txt"]}, "ns")


def test_fetch_cached_downloads_once(tmp_path, inputs, monkeypatch):
    store = Storage.from_uri(f"file://{tmp_path}/store")
    manifest = publish_files(store, inputs, "ns")
    entry = manifest["train.jsonl"]
    assert entry["uri"].startswith("file://")
    calls = []
    real = nc._download_hashing
    monkeypatch.setattr(nc, "_download_hashing", lambda *a: (calls.append(a), real(*a))[1])
    cache = tmp_path / "cache"
    path = fetch_cached(entry, cache_dir=cache)
    assert path == cache / entry["sha256"][:2] / entry["sha256"] / "train.jsonl"
    assert path.read_bytes() == inputs["train.jsonl"].read_bytes()
    assert fetch_cached(entry["uri"], entry["sha256"], cache) == path  # URI + digest form
    assert fetch_cached(entry, cache_dir=cache, verify_cached=True) == path
    assert len(calls) == 1 and _no_temps(cache)
    with pytest.raises(ValueError, match="conflicting"):
        fetch_cached(entry, "0" * 64, cache)


def test_fetch_cached_default_cache_dir(tmp_path, inputs, monkeypatch):
    monkeypatch.setenv(st.CACHE_ENV, str(tmp_path / "envcache"))
    entry = publish_files(Storage.from_uri(tmp_path / "s"), inputs, "ns")["vocab.txt"]
    assert fetch_cached(entry).is_relative_to(tmp_path / "envcache")


def test_fetch_cached_custom_filesystem(tmp_path, inputs):
    store = _storages(tmp_path)["mock"]
    entry = publish_files(store, inputs, "ns")["vocab.txt"]
    assert entry["uri"] == f"bucket/root/ns/{entry['sha256']}/vocab.txt"  # a path on that fs
    path = fetch_cached(entry, cache_dir=tmp_path / "c", filesystem=store.filesystem)
    assert path.read_text() == "a\nb\n"


def test_fetch_cached_rejects_tampered_file(tmp_path, inputs):
    store = Storage.from_uri(tmp_path / "store")
    entry = publish_files(store, inputs, "ns")["train.jsonl"]
    stored = Path(entry["uri"])
    good = stored.read_bytes()
    stored.write_bytes(good.replace(b"1", b"2"))  # same size, other content
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError) as info:
        fetch_cached(entry, cache_dir=cache)
    message = str(info.value)
    assert entry["uri"] in message and entry["sha256"] in message
    assert file_sha256(stored) in message and info.value.actual == file_sha256(stored)
    assert not (cache / entry["sha256"][:2] / entry["sha256"] / "train.jsonl").exists()
    assert _no_temps(cache)
    stored.write_bytes(good)  # repaired remote: the cache was not poisoned, fetch now succeeds
    assert fetch_cached(entry, cache_dir=cache).read_bytes() == good


def test_fetch_cached_replaces_locally_altered_copy_when_verifying(tmp_path, inputs):
    entry = publish_files(Storage.from_uri(tmp_path / "s"), inputs, "ns")["vocab.txt"]
    path = fetch_cached(entry, cache_dir=tmp_path / "c")
    path.write_text("b\na\n")  # same size, corrupted in the cache
    assert fetch_cached(entry, cache_dir=tmp_path / "c", verify_cached=True).read_text() == "a\nb\n"


def _fetch_worker(entry, cache, log, barrier, queue):
    """Runs in a spawned process: count real downloads in ``log``, then fetch."""
    def counting(real):
        def wrapper(*args, **kwargs):
            with open(log, "a") as handle:
                handle.write(f"{os.getpid()}\n")
            return real(*args, **kwargs)
        return wrapper

    nc._download_hashing = counting(nc._download_hashing)  # file fetches
    nc._copy_files = counting(nc._copy_files)              # directory fetches
    barrier.wait(timeout=60)
    if "sha256" in entry:
        queue.put(str(fetch_cached(entry, cache_dir=cache)))
    else:
        queue.put(str(fetch_dir(entry["uri"], entry["digest"], cache)))


def test_concurrent_processes_fetch_once(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    entry = publish_files(Storage.from_uri(tmp_path / "store"), {"big.bin": big}, "ns")["big.bin"]
    cache, log = tmp_path / "cache", tmp_path / "downloads.log"
    ctx = mp.get_context("spawn")  # no fork after pyarrow started its thread pools
    n = 3
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_fetch_worker, args=(entry, cache, log, barrier, queue))
             for _ in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(results)) == 1
    path = Path(results[0])
    assert file_sha256(path) == entry["sha256"]
    assert len(log.read_text().split()) == 1  # the lock made the others reuse the first copy
    assert _tree(cache / entry["sha256"][:2]) == [f"{entry['sha256']}.lock",
                                                  f"{entry['sha256']}/big.bin"]


def _disable_flock(monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(nc.fcntl, "flock", no_flock)


def test_unlocked_file_race_loser_uses_winner(tmp_path, inputs, monkeypatch):
    """Where flock is unsupported both downloads happen; the renames still leave one good file."""
    entry = publish_files(Storage.from_uri(tmp_path / "s"), inputs, "ns")["train.jsonl"]
    _disable_flock(monkeypatch)
    both_downloaded = threading.Barrier(2)
    real = nc._download_hashing

    def slow(*args):
        digest = real(*args)
        both_downloaded.wait(timeout=30)
        return digest

    monkeypatch.setattr(nc, "_download_hashing", slow)
    cache, results = tmp_path / "cache", []
    threads = [threading.Thread(target=lambda: results.append(fetch_cached(entry, cache_dir=cache)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2 and results[0] == results[1]
    assert file_sha256(results[0]) == entry["sha256"] and _no_temps(cache)


# ----------------------------------------------------------------------------- directories

@pytest.fixture
def checkpoint(tmp_path):
    d = tmp_path / "ckpt"
    (d / "tok").mkdir(parents=True)
    (d / "model.bin").write_bytes(os.urandom(256 * 1024))
    (d / "config.json").write_text('{"hidden": 8}')
    (d / "tok" / "vocab.txt").write_text("[CLS]\n[SEP]\n")
    return d


def test_dir_digest_covers_names_and_contents(tmp_path, checkpoint):
    digest = dir_digest(checkpoint)
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    assert dir_digest(copy) == digest
    (copy / "tok" / "vocab.txt").rename(copy / "tok" / "vocab2.txt")
    assert dir_digest(copy) != digest
    (copy / "tok" / "vocab2.txt").rename(copy / "tok" / "vocab.txt")
    (copy / "config.json").write_text('{"hidden": 9}')
    assert dir_digest(copy) != digest


@pytest.mark.parametrize("kind", ["file-uri", "object-store"])
def test_publish_and_fetch_dir(tmp_path, checkpoint, monkeypatch, kind):
    if kind == "object-store":  # direct upload + completion marker, as on S3/GCS
        for module in (st, nc):  # the Storage class and the publisher both ask
            monkeypatch.setattr(module, "_rename_is_atomic", lambda fs: False)
    store = Storage.from_uri(f"file://{tmp_path}/store")
    uri, digest = publish_dir(store, checkpoint, "pretrain")
    assert digest == dir_digest(checkpoint) and uri == store.join("pretrain", digest)
    marker = store.read_json(f"pretrain/{digest}.json")
    assert marker["digest"] == digest and [f["path"] for f in marker["files"]] == [
        "config.json", "model.bin", "tok/vocab.txt"]
    assert store.list() == sorted([f"pretrain/{digest}.json"] + [
        f"pretrain/{digest}/{p}" for p in ("config.json", "model.bin", "tok/vocab.txt")])

    mtimes = {p: os.stat(store.path(p)).st_mtime_ns for p in store.list()}
    uploads = []
    monkeypatch.setattr(Storage, "upload_dir", lambda self, *a: uploads.append(a))
    assert publish_dir(store, checkpoint, "pretrain") == (uri, digest)
    assert uploads == [] and {p: os.stat(store.path(p)).st_mtime_ns for p in store.list()} == mtimes

    cache = tmp_path / "cache"
    local = fetch_dir(uri, digest, cache)
    assert local == cache / digest[:2] / digest
    assert _tree(local) == _tree(checkpoint) and dir_digest(local) == digest
    assert fetch_dir(uri, digest, cache, verify_cached=True) == local and _no_temps(cache)


def test_publish_dir_redoes_incomplete_publish(tmp_path, checkpoint):
    store = Storage.from_uri(tmp_path / "store")
    uri, digest = publish_dir(store, checkpoint, "ns")
    store.delete(f"ns/{digest}.json")  # died after the upload, before the completion marker
    assert publish_dir(store, checkpoint, "ns") == (uri, digest)
    assert store.exists(f"ns/{digest}.json")
    assert [p for p in os.listdir(tmp_path / "store" / "ns")] and _no_temps(tmp_path / "store")


def test_fetch_dir_rejects_tampered_dir(tmp_path, checkpoint):
    store = Storage.from_uri(tmp_path / "store")
    uri, digest = publish_dir(store, checkpoint, "ns")
    (Path(uri) / "config.json").write_text('{"hidden": 1}')
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError) as info:
        fetch_dir(uri, digest, cache)
    assert uri in str(info.value) and digest in str(info.value) and info.value.actual != digest
    assert not (cache / digest[:2] / digest).exists() and _no_temps(cache)
    with pytest.raises(FileNotFoundError):
        fetch_dir(uri + "-missing", digest, cache)
    with pytest.raises(ValueError):
        fetch_dir(uri, "not-a-digest", cache)


def test_fetch_dir_custom_filesystem(tmp_path, checkpoint):
    store = _storages(tmp_path)["mock"]
    uri, digest = publish_dir(store, checkpoint, "ns")
    local = fetch_dir(uri, digest, tmp_path / "c", filesystem=store.filesystem)
    assert _tree(local) == _tree(checkpoint)


def test_unlocked_dir_race_loser_uses_winner(tmp_path, checkpoint, monkeypatch):
    uri, digest = publish_dir(Storage.from_uri(tmp_path / "s"), checkpoint, "ns")
    _disable_flock(monkeypatch)
    both_downloaded = threading.Barrier(2)
    real = nc.dir_digest

    def slow(path):
        value = real(path)
        both_downloaded.wait(timeout=30)
        return value

    monkeypatch.setattr(nc, "dir_digest", slow)
    cache, results, errors = tmp_path / "cache", [], []

    def run():
        try:
            results.append(fetch_dir(uri, digest, cache))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert real(results[0]) == digest and _no_temps(cache)
    assert sorted(os.listdir(cache / digest[:2])) == [digest, f"{digest}.lock"]


def test_concurrent_processes_fetch_dir_once(tmp_path, checkpoint):
    uri, digest = publish_dir(Storage.from_uri(tmp_path / "s"), checkpoint, "ns")
    cache, log = tmp_path / "cache", tmp_path / "log"
    log.write_text("")
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_fetch_worker,
                         args=({"uri": uri, "digest": digest}, cache, log, barrier, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = {queue.get(timeout=120) for _ in procs}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == {str(cache / digest[:2] / digest)}
    assert dir_digest(cache / digest[:2] / digest) == digest and _no_temps(cache)
    assert sorted(os.listdir(cache / digest[:2])) == [digest, f"{digest}.lock"]
    assert len(log.read_text().split()) == 1
