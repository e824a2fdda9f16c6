"""Joining a running cluster never passes num_cpus (Ray raises ValueError); a local Ray gets it."""
from __future__ import annotations

import pytest

from recon.core import ray_session


@pytest.fixture
def init_calls(monkeypatch):
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    return calls


def test_joining_an_address_passes_no_cpus(init_calls, monkeypatch):
    monkeypatch.setattr(ray_session, "cluster_to_join", lambda address=None: "10.0.0.1:6379")
    assert ray_session.ensure_ray(address="10.0.0.1:6379", num_cpus=4) is True
    assert init_calls[0]["address"] == "10.0.0.1:6379" and "num_cpus" not in init_calls[0]


def test_ray_address_or_a_cluster_started_here_is_joined_too(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert ray_session.cluster_to_join(None).endswith(":6379")
    ray_session.ensure_ray(num_cpus=2)
    assert "num_cpus" not in init_calls[0] and init_calls[0]["address"].endswith(":6379")


def test_no_cluster_starts_a_local_ray_with_the_cpus_asked_for(init_calls, monkeypatch):
    monkeypatch.setattr(ray_session, "cluster_to_join", lambda address=None: None)
    ray_session.ensure_ray(num_cpus=3)
    assert init_calls[0]["num_cpus"] == 3 and "address" not in init_calls[0]


def test_remote_tracking_server_gets_no_forced_artifact_location_and_ui_points_at_it(monkeypatch, capsys):
    from recon.orchestration.cli.main import main
    from recon.orchestration.tracking.uri import is_remote

    assert is_remote("http://10.0.0.5:5000") and not is_remote("sqlite:////tmp/x.db")
    called = []
    monkeypatch.setattr("subprocess.call", lambda *a, **k: called.append(a) or 0)
    assert main(["ui", "--tracking-uri", "http://10.0.0.5:5000"]) == 0
    assert "MLflow UI: http://10.0.0.5:5000" in capsys.readouterr().out and not called


def test_workers_get_one_malloc_arena_unless_the_user_chose(init_calls, monkeypatch):
    monkeypatch.setattr(ray_session, "cluster_to_join", lambda address=None: None)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    ray_session.ensure_ray(num_cpus=1)
    assert init_calls[-1]["runtime_env"]["env_vars"]["MALLOC_ARENA_MAX"] == "1"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    ray_session.ensure_ray(num_cpus=1)
    assert init_calls[-1]["runtime_env"]["env_vars"]["MALLOC_ARENA_MAX"] == "4"


def test_a_real_ray_worker_process_starts_with_the_malloc_setting(monkeypatch):
    """glibc reads MALLOC_ARENA_MAX once, at process start: the worker's own environment must have it."""
    import ray

    monkeypatch.setattr(ray_session, "cluster_to_join", lambda address=None: None)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    assert ray_session.ensure_ray(num_cpus=1)
    try:
        @ray.remote(num_cpus=1)
        def start_environment() -> dict:
            import os

            raw = open(f"/proc/{os.getpid()}/environ", "rb").read().split(b"\0")
            return dict(item.decode().split("=", 1) for item in raw if b"=" in item)

        assert ray.get(start_environment.remote()).get("MALLOC_ARENA_MAX") == "1"
    finally:
        ray.shutdown()
