"""``recon submit`` with --slurm / --k8s and ``recon jobs``' choice of backend, through the real command line.

The Slurm end to end (submit, follow, stop through the CLI on a real Slurm) is in ``test_slurm.py``; here:
the flags generated from the launchers' settings reach the sbatch script and the RayJob, ``--dry-run``
prints them (the RayJob validates against KubeRay's CRD for CPU and GPU shapes), a flag of a launcher that
was not chosen is refused, and ``recon ui`` serves a cluster server's artifacts again.
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
import yaml

from recon.orchestration.cli.commands.jobs import backend
from recon.orchestration.cli.main import main
from recon.orchestration.cluster.kuberay import CRD_FILES
from recon.orchestration.cluster.kuberay_crd import validate

KUBERAY = Path(__file__).resolve().parents[2] / "shared" / "kuberay"
STUDY = ["--", "recon", "study", "run", "studies/paper.yaml"]


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _study_in_working_dir(tmp_path):
    """The study file the submitted command names, where the job will run (submit checks it is there)."""
    (tmp_path / "studies").mkdir(exist_ok=True)
    (tmp_path / "studies" / "paper.yaml").write_text((ROOT / "studies" / "paper.yaml").read_text())


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------- --slurm

def test_slurm_dry_run_prints_the_script_the_flags_describe(tmp_path, capsys):
    code, out, _ = _run(capsys, "submit", "--slurm", "--slurm-nodes", "4", "--slurm-gpus-per-node", "2",
                        "--slurm-cpus-per-node", "8", "--slurm-partition", "gpu", "--slurm-time", "12:00:00",
                        "--slurm-mlflow-server", "--storage", "/shared/recon", "--working-dir", str(tmp_path),
                        "--env", "RECON_DATA_DIR=/shared/data", "--slurm-sbatch-lines=--qos=high", "--dry-run",
                        *STUDY)
    assert code == 0
    script = out[:out.index("# (dry run")]
    path = tmp_path / "check.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    header = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
    for line in ("--nodes=4", "--gres=gpu:2", "--cpus-per-task=8", "--partition=gpu", "--time=12:00:00",
                 f"--chdir={tmp_path}", "--qos=high"):
        assert f"#SBATCH {line}" in header
    assert "export RECON_STORAGE=/shared/recon" in script and "export RECON_DATA_DIR=/shared/data" in script
    flat = script.replace(" \\\n  ", " ")
    assert f"--backend-store-uri sqlite:///{tmp_path}/runs/slurm/mlflow.db" in flat
    assert "--artifacts-destination /shared/recon/mlflow-artifacts" in flat
    assert "\nrecon study run studies/paper.yaml ||" in flat
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize("argv,named", [
    (["--slurm-nodes", "2"], "--slurm-nodes"),                               # a Slurm flag on a Ray Job
    (["--slurm", "--address", "http://h:8265"], "--address"),                # a Ray Jobs flag on Slurm
    (["--slurm", "--k8s-image", "x"], "--k8s-image"),                        # another launcher's flag
    (["--k8s", "--slurm-partition", "gpu", "--dry-run"], "--slurm-partition"),
])
def test_a_flag_of_another_launcher_is_refused(argv, named, capsys):
    code, _, err = _run(capsys, "submit", *argv, *STUDY)
    assert code == 2 and named in err and "not used by" in err


def test_slurm_settings_errors_name_the_flag(tmp_path, capsys):
    code, _, err = _run(capsys, "submit", "--slurm", "--slurm-job-name", "my job", "--working-dir", str(tmp_path),
                        "--dry-run", *STUDY)
    assert code == 2 and "--slurm-job-name" in err
    code, _, err = _run(capsys, "submit", "--slurm", "--slurm-mlflow-server", "--tracking-uri", "http://x:5000",
                        "--working-dir", str(tmp_path), "--dry-run", *STUDY)
    assert code == 2 and "keep one" in err


# ---------------------------------------------------------------- --k8s

def _manifest(out: str) -> dict:
    return yaml.safe_load(out)  # the dry run's comment lines are YAML comments


@pytest.mark.parametrize("shape", ["cpu", "gpu"])
def test_k8s_dry_run_prints_a_rayjob_the_crd_accepts(shape, capsys):
    gpus = "0" if shape == "cpu" else "1"
    extra = [] if shape == "cpu" else ["--k8s-tolerations", "nvidia.com/gpu:NoSchedule"]
    code, out, _ = _run(capsys, "submit", "--k8s", "--dry-run", "--k8s-name", f"paper-{shape}",
                        "--k8s-image", "ghcr.io/me/recon:0.1", "--storage", "s3://bucket/recon",
                        "--k8s-workers", "2", "--k8s-worker-gpus", gpus, *extra, *STUDY)
    assert code == 0
    manifest = _manifest(out)
    assert validate(manifest, KUBERAY / CRD_FILES["RayJob"]) == []
    assert manifest["kind"] == "RayJob" and manifest["metadata"]["name"] == f"paper-{shape}"
    assert manifest["spec"]["entrypoint"] == "recon study run studies/paper.yaml"
    worker = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert worker["replicas"] == 2
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (shape == "gpu")
    env = {e["name"]: e.get("value") for e in worker["template"]["spec"]["containers"][0]["env"]}
    assert env["RECON_STORAGE"] == "s3://bucket/recon" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "# apply with (the manifest above on stdin):\n#   kubectl apply -f -" in out


def test_k8s_dry_run_with_a_working_dir_uses_kubectl_ray(tmp_path, capsys):
    (tmp_path / "studies").mkdir(exist_ok=True)
    (tmp_path / "studies" / "paper.yaml").write_text("name: x\n")
    code, out, _ = _run(capsys, "submit", "--k8s", "--dry-run", "--k8s-image", "ghcr.io/me/recon:0.1",
                        "--storage", "s3://bucket/recon", "--tracking-uri", "http://mlflow.tools:5000",
                        "--working-dir", str(tmp_path), *STUDY)
    assert code == 0
    manifest = _manifest(out)
    assert validate(manifest, KUBERAY / CRD_FILES["RayJob"]) == []
    assert manifest["spec"]["submissionMode"] == "InteractiveMode"
    assert f"kubectl ray job submit -n recon -f recon-study.rayjob.yaml --working-dir {tmp_path} -- recon study run" \
           in out


def test_k8s_without_dry_run_refuses_the_placeholders_before_kubectl(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # it must not get as far as looking for kubectl
    code, _, err = _run(capsys, "submit", "--k8s", *STUDY)
    assert code == 2 and "--k8s-image" in err and "--storage" in err and "placeholders" in err


# ---------------------------------------------------------------- recon jobs

@pytest.mark.parametrize("fields,expected", [
    ({"job_id": "12345"}, "slurm"), ({"job_id": "12345_7"}, "slurm"), ({"job_id": "raysubmit_Ab12"}, "ray"),
    ({"job_id": "12345", "address": "http://h:8265"}, "ray"), ({"job_id": "my-job", "slurm": True}, "slurm"),
    ({}, "ray"), ({"slurm": True}, "slurm"),
])
def test_jobs_backend_follows_the_flag_or_the_id(fields, expected):
    args = argparse.Namespace(**{"slurm": False, "address": None, **fields})
    assert backend(args) == expected


def test_jobs_refuses_two_clusters(capsys):
    code, _, err = _run(capsys, "jobs", "status", "123", "--slurm", "--address", "http://h:8265")
    assert code == 2 and "two different clusters" in err


# ---------------------------------------------------------------- recon ui after a cluster's server

def test_ui_serves_a_cluster_servers_artifacts_again(tmp_path, capsys):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    code, out, _ = _run(capsys, "ui", "--tracking-uri", store, "--artifacts-destination", "/shared/mlflow-artifacts",
                        "--port", "5123", "--print-only")
    assert code == 0
    command = next(ln for ln in out.splitlines() if ln.startswith("command: "))
    assert f"--backend-store-uri {store} --artifacts-destination /shared/mlflow-artifacts --workers 1" in command
    assert "--host 127.0.0.1 --port 5123" in command


def test_a_command_file_missing_where_the_job_runs_and_a_bad_time_are_refused_before_submitting(tmp_path, capsys):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    code, out, err = _run(capsys, "submit", "--slurm", "--working-dir", str(empty), "--dry-run", *STUDY)
    assert code == 2 and out == ""
    assert f"studies/paper.yaml is not a file in the job's working directory ({empty}/studies/paper.yaml)" in err
    code, _, err = _run(capsys, "submit", "--k8s", "--working-dir", str(empty), "--dry-run", *STUDY)
    assert code == 2 and "is not a file in --working-dir" in err
    code, _, err = _run(capsys, "submit", "--slurm", "--slurm-time", "12h", "--working-dir", str(tmp_path),
                        "--dry-run", *STUDY)
    assert code == 2 and "--slurm-time: not a Slurm time limit: '12h'" in err
    for good in ("90", "12:00:00", "2-00:00:00", "1-12", "UNLIMITED"):
        assert _run(capsys, "submit", "--slurm", "--slurm-time", good, "--working-dir", str(tmp_path), "--dry-run",
                    *STUDY)[0] == 0, good


def test_k8s_dry_run_says_which_placeholders_are_left(tmp_path, capsys):
    code, out, _ = _run(capsys, "submit", "--k8s", "--dry-run", *STUDY)
    assert code == 0 and "# note: --k8s-image (still registry.example.com/recon:0.1.0) and --storage" in out
    code, out, _ = _run(capsys, "submit", "--k8s", "--k8s-image", "ghcr.io/me/recon:1", "--storage", "s3://b/r",
                        "--dry-run", *STUDY)
    assert code == 0 and "placeholders" not in out
