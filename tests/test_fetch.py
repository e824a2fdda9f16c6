"""`recon data fetch` against a local HTTP server that serves real benchmark files as <repo>/<commit>/<path>."""
from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from recon.core.hashing import file_sha256

from recon.core.errors import DatasetNotFound
from recon.data_prep.fetch import (
    DATASETS,
    SOURCES,
    LicensedDataset,
    Source,
    SourceUnreachable,
    fetch_sources,
    git_blob_id,
    select_sources,
    verify,
)
from recon.data_prep.datadir import fetch_target_dir
from recon.orchestration.cli.commands.data_fetch import add_fetch_parser

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fetch"
BY_PATH = {s.relpath: s for s in SOURCES}
SMALL = [BY_PATH["semeval/rel2id.json"], BY_PATH["chemprot/rel2id.json"], BY_PATH["semeval/train_0.01.txt"]]
OPTS = dict(timeout=5.0, retries=2, backoff=0.0, progress=False)


class _Handler(BaseHTTPRequestHandler):
    """Serves files under server.root; honours `Range: bytes=N-` unless told not to."""

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        file = srv.root / unquote(self.path.lstrip("/"))
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        if srv.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        start = 0
        if rng and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # announce the full body, send part of it, drop the connection
            body, srv.cut_after = body[: srv.cut_after], None
            self.close_connection = True
        srv.sent += len(body)
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root, httpd.requests, httpd.sent = root, [], 0
    httpd.honour_range, httpd.corrupt, httpd.cut_after = True, False, None
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def publish(server, sources, files: dict[str, Path] | None = None) -> None:
    """Lay sources out as <repo>/<commit>/<path>, linking the real files (or the given ones)."""
    for source in sources:
        where = server.root / source.repo / source.commit / source.repo_path
        where.parent.mkdir(parents=True, exist_ok=True)
        where.symlink_to((files or {}).get(source.relpath, SHARED / source.relpath))


def test_table_matches_manifest_and_missing_lists():
    manifest = (SHARED / "MANIFEST.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9]+/[^`]+)` \|", manifest, flags=re.M))
    blobs = set(re.findall(r"\| ([0-9a-f]{40}) \|", (SHARED / "MISSING.md").read_text()))
    assert {s.relpath for s in SOURCES if s.sha256} == listed
    assert {s.git_blob for s in SOURCES if s.git_blob} == blobs
    assert {d for s in SOURCES for d in s.datasets} == set(DATASETS)
    for source in SOURCES:
        if source.sha256:  # every pinned digest and size agrees with the real file
            assert verify(SHARED / source.relpath, source).ok, source.relpath
            assert (SHARED / source.relpath).stat().st_size == source.size


def test_fresh_download_verifies_then_second_run_downloads_nothing(server, tmp_path):
    publish(server, SMALL)
    data = tmp_path / "data"
    first = fetch_sources(SMALL, data, server.url, **OPTS)
    assert [r.status for r in first] == ["downloaded"] * 3
    for result, source in zip(first, SMALL):
        assert result.verification == "sha256 ok"
        assert result.bytes == source.size == result.size
        assert file_sha256(data / source.relpath) == file_sha256(SHARED / source.relpath)
    assert not list(data.rglob("*.part"))
    assert first[0].url == f"{server.url}/{SMALL[0].repo}/{SMALL[0].commit}/{SMALL[0].repo_path}"

    n_requests = len(server.requests)
    second = fetch_sources(SMALL, data, server.url, **OPTS)
    assert [r.status for r in second] == ["present"] * 3
    assert sum(r.bytes for r in second) == 0
    assert len(server.requests) == n_requests


def test_corrupt_existing_file_is_replaced(server, tmp_path):
    source = BY_PATH["semeval/rel2id.json"]
    publish(server, [source])
    target = tmp_path / "data" / source.relpath
    target.parent.mkdir(parents=True)
    target.write_text('{"Other": 0}')
    [result] = fetch_sources([source], tmp_path / "data", server.url, **OPTS)
    assert result.status == "downloaded"
    assert "failed verification" in result.detail and "replaced" in result.detail
    assert verify(target, source).ok


def test_corrupt_existing_file_is_kept_when_new_copy_also_fails(server, tmp_path):
    source = BY_PATH["semeval/rel2id.json"]
    publish(server, [source])
    server.corrupt = True
    target = tmp_path / "data" / source.relpath
    target.parent.mkdir(parents=True)
    target.write_text('{"Other": 0}')
    [result] = fetch_sources([source], tmp_path / "data", server.url, **OPTS)
    assert result.status == "failed"
    assert target.read_text() == '{"Other": 0}'
    assert not target.with_name(target.name + ".part").exists()


def test_truncated_part_resumes_with_range(server, tmp_path):
    source = BY_PATH["semeval/train_0.01.txt"]
    publish(server, [source])
    target = tmp_path / "data" / source.relpath
    target.parent.mkdir(parents=True)
    head = (SHARED / source.relpath).read_bytes()[:10_000]
    target.with_name(target.name + ".part").write_bytes(head)
    [result] = fetch_sources([source], tmp_path / "data", server.url, **OPTS)
    assert server.requests[-1][1] == "bytes=10000-"
    assert result.status == "resumed"
    assert result.bytes == server.sent == source.size - 10_000
    assert result.bytes < source.size
    assert verify(target, source).ok
    assert not target.with_name(target.name + ".part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    source = BY_PATH["semeval/train_0.01.txt"]
    publish(server, [source])
    server.honour_range = False
    target = tmp_path / "data" / source.relpath
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes((SHARED / source.relpath).read_bytes()[:10_000])
    [result] = fetch_sources([source], tmp_path / "data", server.url, **OPTS)
    assert server.requests[-1][1] == "bytes=10000-"  # asked, but got a 200 with the whole file
    assert result.status == "downloaded"
    assert result.bytes == source.size
    assert verify(target, source).ok


def test_dropped_connection_is_resumed_within_one_run(server, tmp_path):
    source = BY_PATH["semeval/train_0.01.txt"]
    publish(server, [source])
    server.cut_after = 5_000
    [result] = fetch_sources([source], tmp_path / "data", server.url, **OPTS)
    assert [rng for _, rng in server.requests] == [None, "bytes=5000-"]
    assert result.status == "downloaded"
    assert result.bytes == source.size
    assert verify(tmp_path / "data" / source.relpath, source).ok


def test_stale_part_with_bad_bytes_is_redownloaded_from_zero(server, tmp_path):
    source = BY_PATH["semeval/train_0.01.txt"]
    publish(server, [source])
    target = tmp_path / "data" / source.relpath
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(b"x" * 10_000)
    [result] = fetch_sources([source], tmp_path / "data", server.url, **OPTS)
    assert [rng for _, rng in server.requests] == ["bytes=10000-", None]
    assert result.status == "downloaded"
    assert verify(target, source).ok


def test_checksum_mismatch_leaves_nothing_at_final_path(server, tmp_path):
    source = BY_PATH["chemprot/rel2id.json"]
    publish(server, [source])
    server.corrupt = True
    [result] = fetch_sources([source], tmp_path / "data", server.url, **OPTS)
    target = tmp_path / "data" / source.relpath
    assert result.status == "failed"
    assert result.verification.startswith("sha256 mismatch")
    assert not target.exists()
    assert not target.with_name(target.name + ".part").exists()


def test_missing_file_on_server_is_reported_failed(server, tmp_path):
    [result] = fetch_sources([BY_PATH["chemprot/rel2id.json"]], tmp_path / "data", server.url, **OPTS)
    assert result.status == "failed" and "HTTP 404" in result.detail
    assert not (tmp_path / "data" / "chemprot" / "rel2id.json").exists()


def test_server_down_gives_offline_error(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago and now has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = BY_PATH["semeval/rel2id.json"]
    base = f"http://127.0.0.1:{port}"
    with pytest.raises(SourceUnreachable) as err:
        fetch_sources([source], tmp_path / "data", base, **OPTS)
    message = str(err.value)
    assert source.relpath in message and source.url(base) in message
    assert "offline" in message and "--data-dir" in message and "RECON_DATA_DIR" in message
    assert "3 attempt(s)" in message
    assert not (tmp_path / "data" / source.relpath).exists()


def test_tacred_and_unknown_names():
    with pytest.raises(LicensedDataset) as err:
        select_sources(["semeval", "TACRED"])
    assert "LDC2018T24" in str(err.value) and "--data-dir" in str(err.value) and "--kind tacred" in str(err.value)
    with pytest.raises(DatasetNotFound) as err:
        select_sources(["semevall"])
    assert "'semevall'" in str(err.value) and all(name in str(err.value) for name in DATASETS)


def test_selection_shares_pid2name_and_defaults_to_all():
    both = [s.relpath for s in select_sources(["fewrel", "fewrel-pubmed"])]
    assert both.count("fewrel/pid2name.json") == 1
    assert [s.relpath for s in select_sources(["fewrel-pubmed"])] == ["fewrel/val_pubmed.json", "fewrel/pid2name.json"]
    assert select_sources([]) == list(SOURCES)
    wiki80 = {s.relpath: s for s in select_sources(["wiki80"])}
    assert wiki80["wiki80/train.txt"].algorithm == wiki80["wiki80/test.txt"].algorithm == "git-blob"


def test_git_blob_id_matches_git_and_verifies_a_download(server, tmp_path):
    sample = FIXTURES / "wiki80_train_sample.txt"
    expected = subprocess.run(["git", "hash-object", "--no-filters", str(sample)], capture_output=True,
                              text=True, check=True).stdout.strip()
    assert git_blob_id(sample) == expected
    real = BY_PATH["wiki80/train.txt"]
    source = Source(real.relpath, real.repo, real.commit, real.repo_path, real.datasets, git_blob=expected)
    publish(server, [source], {source.relpath: sample})
    [result] = fetch_sources([source], tmp_path / "data", server.url, **OPTS)
    assert result.status == "downloaded" and result.verification == "git-blob ok"
    assert (tmp_path / "data" / "wiki80" / "train.txt").read_bytes() == sample.read_bytes()
    # the real pinned id is a different content: the same bytes must fail against it
    assert not verify(sample, real).ok


def test_cli_fetch_json_and_licence_error(server, tmp_path, capsys, monkeypatch):
    parser = argparse.ArgumentParser(prog="recon")
    data = parser.add_subparsers(dest="command").add_parser("data").add_subparsers(dest="data_command")
    add_fetch_parser(data)
    publish(server, select_sources(["fewrel-pubmed"]))
    monkeypatch.setenv("RECON_DATA_DIR", str(tmp_path / "data"))
    args = parser.parse_args(["data", "fetch", "fewrel-pubmed", "--base-url", server.url, "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data_dir"] == str(tmp_path / "data")
    assert [(f["relpath"], f["status"]) for f in report["files"]] == [
        ("fewrel/val_pubmed.json", "downloaded"), ("fewrel/pid2name.json", "downloaded")]
    assert all(f["verification"] == "sha256 ok" for f in report["files"])

    args = parser.parse_args(["data", "fetch", "fewrel-pubmed", "--base-url", server.url])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert re.search(r"fewrel/pid2name\.json\s+present\s+0\s+80278\s+sha256 ok", table)

    args = parser.parse_args(["data", "fetch", "tacred"])
    with pytest.raises(LicensedDataset):
        args.func(args)


def test_complete_part_is_verified_without_refetching(server, tmp_path):
    sample = FIXTURES / "wiki80_train_sample.txt"
    real = BY_PATH["wiki80/train.txt"]
    blob = Source(real.relpath, real.repo, real.commit, real.repo_path, real.datasets, git_blob=git_blob_id(sample))
    sized = BY_PATH["chemprot/rel2id.json"]
    publish(server, [blob], {blob.relpath: sample})
    for source, content in ((blob, sample.read_bytes()), (sized, (SHARED / sized.relpath).read_bytes())):
        target = tmp_path / "data" / source.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.with_name(target.name + ".part").write_bytes(content)
    results = fetch_sources([blob, sized], tmp_path / "data", server.url, **OPTS)
    # size unknown: the server is asked for the rest and answers 416; size known: no request at all
    assert [rng for _, rng in server.requests] == [f"bytes={sample.stat().st_size}-"]
    assert [(r.status, r.bytes) for r in results] == [("resumed", 0), ("resumed", 0)]
    assert all(verify(tmp_path / "data" / s.relpath, s).ok for s in (blob, sized))


def test_fetch_dir_follows_the_data_dir_resolver(tmp_path, monkeypatch):
    import recon.data_prep.datadir as datadir

    monkeypatch.delenv("RECON_DATA_DIR", raising=False)
    monkeypatch.delenv("RECON_CACHE_DIR", raising=False)
    assert fetch_target_dir(str(tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.setenv("RECON_DATA_DIR", str(tmp_path / "env"))
    assert fetch_target_dir(None) == tmp_path / "env"
    monkeypatch.delenv("RECON_DATA_DIR")
    assert fetch_target_dir(None).resolve() == SHARED.resolve()  # the checkout's ../shared/datasets
    # a user without the shared folder: the per-user download directory, which the loaders search too
    monkeypatch.setattr(datadir, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    target = tmp_path / "home" / ".cache" / "recon" / "datasets"
    assert fetch_target_dir(None) == target
    assert target in [path for path, _why in datadir.candidate_dirs(None)]
