"""A real two-node Ray cluster whose worker shares no disk with the driver (tests/cluster_harness.py).

The worker node runs in its own mount namespace: the driver's output dir, the data dir and $HOME are
empty tmpfs there; only ``cluster.shared`` (NFS/S3 stand-in) is common. Token auth is on.
Needs root + ``unshare`` (CI runs as root); skipped with the reason otherwise.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cluster_harness import descendants, two_node_cluster, unshare_available  # noqa: E402

_UNSHARE = unshare_available()


def cluster_test(fn):
    """Slow, and skipped (with the reason) only where the harness cannot make a mount namespace."""
    fn = pytest.mark.skipif(_UNSHARE is not None, reason=f"two-node cluster harness: {_UNSHARE}")(fn)
    return pytest.mark.slow(fn)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RECON_DATA_DIR") or ROOT.parent / "shared" / "datasets")


def _python(cluster, code: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` as a separate driver process (the test process never calls ray.init)."""
    return subprocess.run([sys.executable, "-c", code], env=env or cluster.client_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=cluster.tmp)


def _recon(cluster, *args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recon.orchestration.cli.main", *args],
                          env=env or cluster.client_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


PROBE = """
import json, os, ray
ray.init(address={address!r}, log_to_driver=False)

@ray.remote(num_cpus=1, resources={{"recon_worker": 1}})
def probe(paths):
    def look(p):
        return {{"exists": os.path.exists(p), "listing": sorted(os.listdir(p)) if os.path.isdir(p) else None}}
    return {{"node": ray.get_runtime_context().get_node_id(),
             "paths": {{p: look(p) for p in paths}}}}

print("RESULT", json.dumps(ray.get(probe.remote({paths!r}), timeout=90)))
"""


def _probe(cluster, paths: list[str]) -> dict:
    res = _python(cluster, PROBE.format(address=cluster.address, paths=paths))
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(l for l in res.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@cluster_test
def test_worker_sees_shared_storage_only(tmp_path):
    out = tmp_path / "driver_out"
    data = tmp_path / "data"
    out.mkdir()
    shutil.copytree(DATA / "semeval", data / "semeval") if (DATA / "semeval").is_dir() else data.mkdir()
    (out / "model.safetensors").write_text("driver-local output")
    (data / "marker.txt").write_text("driver-local data")
    home_marker = Path.home() / f".recon-cluster-test-{secrets.token_hex(4)}"
    home_marker.write_text("driver-local home file")
    hidden = [out, data] + ([DATA] if DATA.is_dir() else [])
    try:
        with two_node_cluster(tmp_path, {"recon_worker": 8}, worker_cpus=2, hidden=hidden) as cluster:
            (cluster.shared / "datasets").mkdir()
            (cluster.shared / "datasets" / "shared.txt").write_text("on NFS")
            paths = [str(out), str(data), str(home_marker), str(Path.home()),
                     str(cluster.shared / "datasets"), str(ROOT / "orchestration"), str(DATA)]
            got = _probe(cluster, paths)
            seen = got["paths"]

            assert got["node"] != cluster.head_node_id
            assert got["node"] == cluster.worker_node_id
            assert seen[str(out)] == {"exists": True, "listing": []}      # empty tmpfs
            assert seen[str(data)] == {"exists": True, "listing": []}
            assert seen[str(DATA)]["listing"] in ([], None)
            assert seen[str(home_marker)]["exists"] is False
            assert ".ray" not in seen[str(Path.home())]["listing"]       # no token file to read
            assert seen[str(cluster.shared / "datasets")]["listing"] == ["shared.txt"]
            assert "cli" in seen[str(ROOT / "orchestration")]["listing"]  # installed source visible
            # the driver side still sees its files
            assert (out / "model.safetensors").exists() and home_marker.exists()
    finally:
        home_marker.unlink(missing_ok=True)


@cluster_test
def test_client_without_token_is_refused(tmp_path):
    with two_node_cluster(tmp_path, start_worker=False) as cluster:
        # The dashboard / Jobs HTTP API: 401 without a token, 403 with a wrong one.
        assert cluster.api("/api/v0/nodes", token=None)[0] == 401
        assert cluster.api("/api/v0/nodes", token="0" * 64)[0] == 403
        assert cluster.api("/api/v0/nodes")[0] == 200

        bare = {k: v for k, v in cluster.client_env().items() if not k.startswith("RAY_AUTH")}
        bare["HOME"] = str(tmp_path / "empty-home")   # no ~/.ray/auth_token to fall back on
        # recon jobs list: a clean error naming the fix
        res = _recon(cluster, "jobs", "list", "--address", cluster.dashboard_url, env=bare)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "RAY_AUTH_TOKEN" in res.stderr and "Traceback" not in res.stderr

        # a ray.init driver: without auth mode, and with a wrong token, it cannot connect
        code = (f"import ray\ntry:\n    ray.init(address={cluster.address!r})\n"
                f"    print('CONNECTED', ray.cluster_resources())\n"
                f"except Exception as e:\n    print('REFUSED', type(e).__name__, str(e)[:300])\n")
        for env in (bare, {**bare, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 64}):
            res = _python(cluster, code, timeout=90, env=env)
            assert "CONNECTED" not in res.stdout, res.stdout
            assert "REFUSED" in res.stdout or res.returncode != 0, res.stdout + res.stderr[-2000:]
            # Ray's GCS says why (gRPC Unauthenticated), not a generic timeout
            assert "Authentication token is missing or incorrect" in res.stderr, res.stderr[-2000:]
        # with the token it connects
        res = _python(cluster, code, timeout=90)
        assert "CONNECTED" in res.stdout, res.stdout + res.stderr[-2000:]


@cluster_test
def test_kill_and_restart_worker(tmp_path):
    with two_node_cluster(tmp_path) as cluster:
        first = _probe(cluster, ["/"])["node"]
        worker_pids = descendants(cluster.worker_proc.pid)
        cluster.kill_worker()
        assert cluster.worker_node_id is None and first in cluster.dead_worker_ids
        assert not [p for p in worker_pids if Path(f"/proc/{p}").exists()
                    and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        dead = [n for n in cluster.nodes() if n["node_id"] == first]
        assert dead and dead[0]["state"] == "DEAD"

        second = cluster.start_worker()
        assert second != first
        assert _probe(cluster, ["/"])["node"] == second


@cluster_test
def test_recon_submit_and_follow_job(tmp_path):
    out = tmp_path / "driver_out"
    out.mkdir()
    with two_node_cluster(tmp_path, hidden=[out] + ([DATA] if DATA.is_dir() else [])) as cluster:
        shared_data = cluster.shared / "datasets"
        shutil.copytree(DATA / "semeval", shared_data / "semeval")
        check = ("import os, ray; ray.init(); "
                 "print('storage', os.environ.get('RECON_STORAGE')); "
                 "print('tracking', os.environ.get('MLFLOW_TRACKING_URI')); "
                 "print('token in runtime env', 'RAY_AUTH_TOKEN' in ray.get_runtime_context().runtime_env.get('env_vars', {})); "
                 "print('cwd has studies', os.path.isdir('studies'), 'has .git', os.path.exists('.git')); "
                 "print('driver on', ray.get_runtime_context().get_node_id()); "
                 "print('cpus', ray.cluster_resources().get('CPU'))")
        shell = (f"recon data stats --dataset semeval --data-dir {shared_data} && "
                 f"python -c \"{check}\"")
        t0 = time.monotonic()
        res = _recon(cluster, "submit", "--address", cluster.dashboard_url,
                     "--storage", str(cluster.shared / "recon"),
                     "--tracking-uri", "http://127.0.0.1:5999",
                     "--entrypoint-resources", '{"recon_worker": 1}',
                     "--", "bash", "-c", shell)
        assert res.returncode == 0, res.stdout + res.stderr
        first = res.stdout.splitlines()[0]
        assert first.startswith("submitted raysubmit_"), res.stdout
        job_id = first.split()[1].rstrip(":")
        assert f"recon jobs logs {job_id} --follow --address {cluster.dashboard_url}" in res.stdout

        follow = _recon(cluster, "jobs", "logs", job_id, "--follow", "--address", cluster.dashboard_url)
        assert follow.returncode == 0, follow.stdout + follow.stderr
        log = follow.stdout
        assert f"job {job_id} SUCCEEDED" in log
        assert "train    6,507 examples" in log
        assert f"storage {cluster.shared / 'recon'}" in log
        assert "tracking http://127.0.0.1:5999" in log
        assert "token in runtime env False" in log
        assert "cwd has studies True has .git False" in log
        assert f"driver on {cluster.worker_node_id}" in log   # ran on the namespaced worker
        assert "cpus 2.0" in log

        listed = _recon(cluster, "jobs", "list", "--address", cluster.dashboard_url)
        assert listed.returncode == 0 and job_id in listed.stdout and "SUCCEEDED" in listed.stdout
        st = _recon(cluster, "jobs", "status", job_id, "--json", "--address", cluster.dashboard_url)
        assert st.returncode == 0, st.stdout + st.stderr
        assert json.loads(st.stdout)["status"] == "SUCCEEDED"
        assert time.monotonic() - t0 < 120


# -- recon.orchestration.cluster.jobs without a cluster (fast) -------------------------------------------------

def test_default_address(monkeypatch):
    from recon.orchestration.cluster import jobs

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert jobs.default_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")          # a GCS address: not for Jobs
    assert jobs.default_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "https://ray.example:8265")
    assert jobs.default_address() == "https://ray.example:8265"


def test_runtime_env_uploads_project_without_heavy_or_secret_things(monkeypatch, tmp_path):
    from recon.orchestration.cluster import jobs
    from recon.core.errors import ReconError

    for k in ("RECON_STORAGE", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")
    renv = jobs.runtime_env(storage="s3://b/recon", tracking_uri="http://10.0.0.5:5000",
                            working_dir=tmp_path, env={"X": "1"})
    assert renv["env_vars"] == {"RAY_AUTH_MODE": "token", "RECON_STORAGE": "s3://b/recon",
                                "MLFLOW_TRACKING_URI": "http://10.0.0.5:5000", "X": "1",
                                "RECON_SUBMITTED": "ray-job"}  # the job knows its working dir is temporary
    assert "s3cret" not in repr(renv) and "pip" not in renv
    assert renv["working_dir"] == str(tmp_path.resolve())
    for pattern in (".git/", "/runs/", "mlruns/", "*.db", "*.safetensors", "*.bin", "*.pt", "/data/"):
        assert pattern in renv["excludes"]
    with pytest.raises(ReconError, match="RAY_AUTH_TOKEN"):
        jobs.runtime_env(working_dir=None, env={"RAY_AUTH_TOKEN": "x"})
    assert jobs.runtime_env(working_dir=None, pip=["s3fs"])["pip"] == ["s3fs"]


def test_token_lookup_order(monkeypatch, tmp_path):
    from recon.orchestration.cluster import jobs

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-file\n")
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(k, raising=False)
    assert jobs._token() is None                 # never sent without opting in
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert jobs._token() == "from-file"
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jobs._token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs._token() == "from-env"


def test_cli_errors_are_one_paragraph(capsys):
    from recon.orchestration.cli.main import main

    assert main(["submit", "--address", "http://127.0.0.1:1"]) == 2
    assert "nothing to submit" in capsys.readouterr().err
    assert main(["jobs", "list", "--address", "127.0.0.1:6379"]) == 2
    assert "dashboard URL" in capsys.readouterr().err
