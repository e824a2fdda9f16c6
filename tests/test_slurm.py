"""The Slurm launcher: the sbatch script it writes, and a study run through it on a real Slurm.

* Unit tests render the script for both modes on 1 and 4 nodes with GPUs, check its syntax (``bash -n``)
  and its srun / ray lines, and run it under bash with stand-ins for scontrol, srun, ray, python and
  recon that record their arguments: the head address, the port block, the worker step, the recon
  command's flags, the token check and the clean-up are what the script really does, not just what it says.
* End to end (``slow``), on the one-node Slurm of ``slurm_harness`` (real munged / slurmctld / slurmd), in
  both modes: a 4-trial toy study submitted with ``submit`` finishes with one FINISHED MLflow run per trial
  and its tables; the same study with a slower trainer is cancelled mid-grid, submitted again, and ends with
  every trial exactly once in MLflow and no trial that had finished trained twice (attempt markers, as in
  the cluster tests). Symmetric mode (``srun ray symmetric-run``, which ends with ``ray stop``) is safe on
  this shared machine because slurmd, and so every job step, runs in a PID and mount namespace of its own
  (see ``slurm_harness``): the test checks that a process outside it which ``ray stop`` would stop (its
  command line names a Ray worker) outlives the job. The CLI test (the job's own MLflow server) is shared
  mode.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from slurm_harness import free_port, slurm_cluster_fixture  # noqa: E402,F401  (the fixture, by name)

from recon.core.config import ConfigError  # noqa: E402
from recon.core.errors import ReconError  # noqa: E402
from recon.orchestration.cluster import slurm  # noqa: E402
from recon.orchestration.cluster.slurm_settings import SlurmError, SlurmSettings
from recon.orchestration.cluster.slurm_script import render_sbatch

FIXTURES = Path(__file__).parent / "fixtures" / "studies"
STUDY = ["recon", "study", "run", "studies/paper.yaml"]


def _bash_syntax_ok(script: str, tmp_path: Path) -> None:
    path = tmp_path / "check.sbatch"
    path.write_text(script)
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


# ====================================================================== the rendered script

@pytest.mark.parametrize("mode", ["shared", "symmetric"])
@pytest.mark.parametrize("nodes,gpus", [(1, 0), (4, 2)])
def test_script_is_valid_bash_with_the_allocation_in_its_header(mode, nodes, gpus, tmp_path):
    s = SlurmSettings(nodes=nodes, cpus_per_node=8, gpus_per_node=gpus, mode=mode, partition="gpu", time="4:00:00",
                      mem="64G", account="proj", workdir=str(tmp_path), sbatch_lines=["--qos=high"])
    script = render_sbatch(s, STUDY)
    _bash_syntax_ok(script, tmp_path)
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
    header = _sbatch_lines(script)
    assert f"#SBATCH --nodes={nodes}" in header and "#SBATCH --ntasks-per-node=1" in header
    assert "#SBATCH --cpus-per-task=8" in header and "#SBATCH --partition=gpu" in header
    assert "#SBATCH --time=4:00:00" in header and "#SBATCH --mem=64G" in header and "#SBATCH --account=proj" in header
    assert ("#SBATCH --gres=gpu:2" in header) == (gpus == 2)
    assert ("#SBATCH --exclusive" in header) == (mode == "symmetric")
    assert f"#SBATCH --chdir={tmp_path}" in header and "#SBATCH --qos=high" in header
    assert f"#SBATCH --output={tmp_path}/runs/slurm/%x-%j.out" in header
    # every #SBATCH line comes before the first command (sbatch stops reading them there)
    first_command = next(i for i, ln in enumerate(script.splitlines()) if ln and not ln.startswith("#"))
    assert all(i < first_command for i, ln in enumerate(script.splitlines()) if ln.startswith("#SBATCH"))
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script
    assert "export RAY_AUTH_MODE=token" in script
    for name, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                        ("HF_HUB_DISABLE_TELEMETRY", "1")):
        assert f'export {name}="${{{name}:-{value}}}"' in script


def test_shared_mode_on_four_nodes_starts_the_head_here_and_workers_with_one_srun(tmp_path):
    s = SlurmSettings(nodes=4, cpus_per_node=8, gpus_per_node=2, workdir=str(tmp_path))
    script = render_sbatch(s, STUDY)
    flat = script.replace(" \\\n  ", " ")
    head = next(ln for ln in flat.splitlines() if ln.startswith("ray start --head"))
    assert "--block" in head and '--node-ip-address="$head_ip"' in head and '--port="$gcs_port"' in head
    assert "--num-cpus=8 --num-gpus=2" in head and '"${node_ports[@]}"' in head and head.endswith("&")
    workers = next(ln for ln in flat.splitlines() if ln.startswith("srun "))
    assert workers.startswith("srun --nodes=3 --ntasks=3 --ntasks-per-node=1 --cpus-per-task=8 --gres=gpu:2 "
                              '--exclude="$head_node" ray start --block --address="$head_ip:$gcs_port"')
    assert "--num-cpus=8 --num-gpus=2" in workers and workers.endswith("&")
    assert "wait-for-nodes" in flat and "--nodes 4" in flat
    assert "ray stop" not in flat.replace("`ray stop`", "")  # only mentioned, never run: other jobs' Ray would stop
    assert "port_block=$(( 20000 + SLURM_JOB_ID % 63 * 200 ))" in script
    assert "--min-worker-port=$((port_block + 10))" in script and "--max-worker-port=$((port_block + 199))" in script
    assert "\nrecon study run studies/paper.yaml ||" in flat  # RAY_ADDRESS (exported) leads it to the allocation


def test_shared_mode_on_one_node_has_no_srun_step(tmp_path):
    flat = render_sbatch(SlurmSettings(nodes=1, workdir=str(tmp_path)), STUDY).replace(" \\\n  ", " ")
    assert not [ln for ln in flat.splitlines() if ln.startswith("srun ")]
    assert "ray start --head --block" in flat and "--nodes 1" in flat


@pytest.mark.parametrize("nodes,gpus", [(1, 0), (4, 2)])
def test_symmetric_mode_is_rays_recipe(nodes, gpus, tmp_path):
    s = SlurmSettings(nodes=nodes, cpus_per_node=8, gpus_per_node=gpus, mode="symmetric", workdir=str(tmp_path))
    flat = render_sbatch(s, STUDY).replace(" \\\n  ", " ")
    line = next(ln for ln in flat.splitlines() if ln.startswith("srun "))
    gres = f" --gres=gpu:{gpus}" if gpus else ""
    assert line.startswith(f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpus-per-task=8{gres} "
                           f'ray symmetric-run --address "$RAY_ADDRESS" --min-nodes {nodes} '
                           f"--num-cpus=8 --num-gpus={gpus} ")
    assert ' -- recon study run studies/paper.yaml || rc=$?' in line
    assert "gcs_port=6379" in flat and "ray start --head" not in flat
    assert "--include-dashboard" not in line  # a head-only flag: symmetric-run passes its flags to every node


def test_values_are_quoted_and_the_token_is_never_written(tmp_path, monkeypatch):
    token = "tok-" + secrets.token_hex(16)
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(token + "-file")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    nasty = "/shared/it's $(rm -rf ~) `x`"
    s = SlurmSettings(storage=nasty, tracking_uri="sqlite:///db dir/mlflow.db", workdir=str(tmp_path),
                      env={"RECON_DATA_DIR": "/data; echo pwned"})
    script = render_sbatch(s, ["recon", "study", "run", "my study.yaml"])
    _bash_syntax_ok(script, tmp_path)
    assert token not in script  # neither the environment's token nor the file's
    exports = "\n".join(ln for ln in script.splitlines() if ln.startswith("export RECON_"))
    done = subprocess.run(["bash", "-c", exports + '\nprintf "%s\\n%s" "$RECON_STORAGE" "$RECON_DATA_DIR"'],
                          capture_output=True, text=True, check=True)
    assert done.stdout == f"{nasty}\n/data; echo pwned"
    assert "recon study run 'my study.yaml'" in script
    # a relative sqlite store is made absolute against the job's working directory
    assert f"export MLFLOW_TRACKING_URI='sqlite:///{tmp_path}/db dir/mlflow.db'" in script


def test_a_secret_in_env_is_refused(tmp_path):
    with pytest.raises(ReconError, match="secret"):
        render_sbatch(SlurmSettings(env={"HF_TOKEN": "hf_abcdefgh"}, workdir=str(tmp_path)), STUDY)


def test_the_command_runs_as_given_and_reads_the_exported_environment(tmp_path):
    s = SlurmSettings(storage="/shared/recon", tracking_uri="http://10.0.0.5:5000", workdir=str(tmp_path))
    flat = lambda cmd: render_sbatch(s, cmd).replace(" \\\n  ", " ")  # noqa: E731
    run = flat(["recon", "study", "run", "s.yaml"])
    assert "\nrecon study run s.yaml ||" in run
    assert "export RECON_STORAGE=/shared/recon" in run and "export MLFLOW_TRACKING_URI=http://10.0.0.5:5000" in run
    assert 'export RAY_ADDRESS="$head_ip:$gcs_port"' in run
    assert "python train.py ||" in flat(["python", "train.py"])  # any command: RAY_ADDRESS is set for it too
    given = flat(["recon", "study", "run", "s.yaml", "--storage=/shared/recon"])
    run_line = next(ln for ln in given.splitlines() if ln.startswith("recon study run"))
    assert run_line.count("--storage") == 1  # the command's own value, not repeated
    with pytest.raises(ReconError, match="drop --address"):
        render_sbatch(s, ["recon", "study", "run", "s.yaml", "--address", "10.0.0.1:6379"])
    with pytest.raises(ReconError, match="keep one"):
        render_sbatch(s, ["recon", "study", "run", "s.yaml", "--storage", "/elsewhere"])


@pytest.mark.parametrize("field,value,match", [
    ("job_name", "my job", "letters"), ("mode", "magic", "one of"), ("nodes", 0, ">= 1"),
    ("ray_temp_root", "/a/very/long/temporary/folder/name", "107"), ("port_base", 32700, "ephemeral"),
    ("partition", "gpu a100", "no spaces"), ("sbatch_lines", ["--qos=a\n#SBATCH --x"], "one #SBATCH"),
])
def test_settings_reject_values_that_would_break_the_script(field, value, match):
    with pytest.raises(ConfigError, match=match):
        SlurmSettings(**{field: value})


def test_settings_make_command_line_flags_for_the_cli():
    """The CLI can generate --slurm-* flags from the settings, as it does for every config class."""
    from recon.orchestration.cli.flags import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    flags = add_config_arguments(parser, SlurmSettings, prefix="slurm-")
    args = parser.parse_args(["--slurm-nodes", "4", "--slurm-gpus-per-node", "2", "--slurm-mode", "symmetric",
                              "--slurm-sbatch-lines=--qos=high", "--slurm-env", '{"A": "1"}'])
    s = config_from_args(SlurmSettings, args, flags)
    assert (s.nodes, s.gpus_per_node, s.mode, s.sbatch_lines, s.env) == (4, 2, "symmetric", ["--qos=high"], {"A": "1"})


def test_browse_hint_points_at_the_runs(tmp_path):
    remote = SlurmSettings(tracking_uri="http://10.0.0.5:5000", workdir=str(tmp_path))
    assert slurm.browse_hint(STUDY, remote).startswith("http://10.0.0.5:5000")
    local = SlurmSettings(workdir=str(tmp_path))
    assert slurm.browse_hint(STUDY, local) == f"recon ui {tmp_path}/studies/paper.yaml"
    assert slurm.browse_hint(["python", "x.py"], local) is None


def test_the_module_imports_neither_ray_nor_mlflow():
    code = ("import sys, recon.orchestration.cluster.slurm; "
            "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------- the script, run with stand-ins

STUBS = {
    "scontrol": """case "$1 $2" in
  "show hostnames") printf 'node1\\nnode2\\nnode3\\nnode4\\n' ;;
  "show node") echo "NodeName=$3 Arch=x86_64 CoresPerSocket=1"; echo "   NodeAddr=127.0.0.1 NodeHostName=$3 Version=22.05" ;;
esac""",
    "ray": 'case " $* " in *" --block "*) exec sleep 60 ;; esac',
    "srun": 'case " $* " in *" symmetric-run "*) exit "${SRUN_RC:-0}" ;; *) exec sleep 60 ;; esac',
    # `-m mlflow server` runs until the clean-up stops it; the wait for it returns once it has started
    "python": """case " $* " in
  *" mlflow server "*) exec sleep 60 ;;
  *" wait-for-http "*) for _ in $(seq 100); do grep -q "mlflow.server" "$CALLS" && break; sleep 0.1; done ;;
esac
exit 0""",
    "recon": 'echo "env RAY_ADDRESS=$RAY_ADDRESS RAY_AUTH_MODE=$RAY_AUTH_MODE MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-}"'
             ' >> "$CALLS"; exit "${RECON_RC:-0}"',
}


def _run_with_stubs(script: str, tmp_path: Path, *, token: bool = True, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run ``script`` under bash with the stand-ins on PATH; returns the result and each recorded call's argv."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name, body in STUBS.items():
        path = stubs / name
        path.write_text(f'#!/bin/bash\nprintf "%s\\x1f" "{name}" "$@" >> "$CALLS"; echo >> "$CALLS"\n{body}\n')
        path.chmod(0o755)
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True, exist_ok=True)
    if token:
        (home / ".ray" / "auth_token").write_text("x" * 64)
    calls = tmp_path / "calls"
    calls.write_text("")
    (tmp_path / "job.sbatch").write_text(script)
    base = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(home), "CALLS": str(calls), "SLURM_JOB_ID": "12345",
            "SLURM_JOB_NODELIST": "node[1-4]"}
    started = time.monotonic()
    done = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env={**base, **env}, capture_output=True, text=True,
                          timeout=50)
    assert time.monotonic() - started < 30, "the script waited for its Ray stand-ins: the clean-up did not stop them"
    argvs = [line.rstrip("\x1f").split("\x1f") for line in calls.read_text().splitlines() if "\x1f" in line]
    env_lines = [line for line in calls.read_text().splitlines() if line.startswith("env ")]
    return done, argvs + [line.split() for line in env_lines]


def test_shared_script_runs_ray_on_the_port_block_and_recon_against_it(tmp_path):
    s = SlurmSettings(nodes=4, cpus_per_node=8, gpus_per_node=2, storage="/shared/recon", workdir=str(tmp_path))
    done, calls = _run_with_stubs(render_sbatch(s, STUDY), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    block = 20000 + 12345 % 63 * 200  # = 32000
    head = next(c for c in calls if c[:3] == ["ray", "start", "--head"])
    assert "--node-ip-address=127.0.0.1" in head and f"--port={block}" in head
    assert f"--min-worker-port={block + 10}" in head and f"--max-worker-port={block + 199}" in head
    assert "--temp-dir=/tmp/ray-12345" in head
    srun = next(c for c in calls if c[0] == "srun")
    assert srun[1:7] == ["--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--cpus-per-task=8", "--gres=gpu:2",
                         "--exclude=node1"]
    assert srun[7:10] == ["ray", "start", "--block"] and f"--address=127.0.0.1:{block}" in srun
    wait = next(c for c in calls if c[0] == "python")
    assert wait[1:4] == ["-m", "recon.orchestration.cluster.slurm", "wait-for-nodes"]
    assert wait[wait.index("--nodes") + 1] == "4"
    recon = next(c for c in calls if c[0] == "recon")
    assert recon == ["recon", "study", "run", "studies/paper.yaml"]
    assert ["env", f"RAY_ADDRESS=127.0.0.1:{block}", "RAY_AUTH_MODE=token", "MLFLOW_TRACKING_URI="] in calls
    assert "recon: the command exited with status 0" in done.stdout


def test_shared_script_passes_on_the_commands_failure_and_still_stops_ray(tmp_path):
    s = SlurmSettings(nodes=2, workdir=str(tmp_path))
    done, _ = _run_with_stubs(render_sbatch(s, STUDY), tmp_path, RECON_RC="3")
    assert done.returncode == 3 and "exited with status 3" in done.stdout


def test_script_stops_before_ray_without_a_token(tmp_path):
    done, calls = _run_with_stubs(render_sbatch(SlurmSettings(workdir=str(tmp_path)), STUDY), tmp_path, token=False)
    assert done.returncode == 2 and "no Ray token" in done.stderr
    assert not [c for c in calls if c[0] in ("ray", "srun", "recon")]


def test_symmetric_script_runs_symmetric_run_on_every_node(tmp_path):
    s = SlurmSettings(nodes=4, cpus_per_node=8, gpus_per_node=2, mode="symmetric", workdir=str(tmp_path))
    done, calls = _run_with_stubs(render_sbatch(s, STUDY), tmp_path, SRUN_RC="5")
    assert done.returncode == 5, done.stdout + done.stderr  # the head's command status comes back through srun
    srun = next(c for c in calls if c[0] == "srun")
    assert srun[1:6] == ["--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--cpus-per-task=8", "--gres=gpu:2"]
    sep = srun.index("--")
    assert srun[6:sep] == ["ray", "symmetric-run", "--address", "127.0.0.1:6379", "--min-nodes", "4",
                           "--num-cpus=8", "--num-gpus=2", "--temp-dir=/tmp/ray-12345"]
    assert srun[sep + 1:] == ["recon", "study", "run", "studies/paper.yaml"]


@pytest.mark.parametrize("mode", ["shared", "symmetric"])
def test_the_jobs_own_mlflow_server_runs_on_the_head_and_the_command_logs_to_it(mode, tmp_path):
    s = SlurmSettings(nodes=2, mode=mode, mlflow_server=True, storage="/shared/recon", workdir=str(tmp_path))
    script = render_sbatch(s, STUDY)
    _bash_syntax_ok(script, tmp_path)
    s.resolved_log_dir().mkdir(parents=True)  # submit makes it: the server's output goes there
    done, calls = _run_with_stubs(script, tmp_path, SRUN_RC="0")
    assert done.returncode == 0, done.stdout + done.stderr
    port = 20000 + 12345 % 63 * 200 + 9 if mode == "shared" else 5000
    server = next(c for c in calls if c[:4] == ["python", "-m", "mlflow", "server"])
    assert server[4:] == ["--backend-store-uri", f"sqlite:///{tmp_path}/runs/slurm/mlflow.db",
                          "--artifacts-destination", "/shared/recon/mlflow-artifacts", "--workers", "1",
                          "--host", "127.0.0.1", "--port", str(port), "--allowed-hosts",
                          f"127.0.0.1:{port},localhost:{port},127.0.0.1:{port}"]
    wait = next(c for c in calls if c[:4] == ["python", "-m", "recon.orchestration.cluster.slurm", "wait-for-http"])
    assert wait[wait.index("--url") + 1] == f"http://127.0.0.1:{port}/health"
    command = next(i for i, c in enumerate(calls) if c[0] == "recon" or c[:2] == ["srun", "--nodes=2"])
    assert calls.index(wait) < command  # the command starts once the server answers
    if mode == "shared":
        assert any(c[:2] == ["env", f"RAY_ADDRESS=127.0.0.1:{20000 + 12345 % 63 * 200}"] and
                   c[3] == f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" for c in calls if c[0] == "env")
    assert "recon ui --tracking-uri" in script and f"recon: MLflow server at" in script


def test_mlflow_server_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="keep one"):
        SlurmSettings(mlflow_server=True, tracking_uri="http://10.0.0.5:5000")
    with pytest.raises(ConfigError, match="set mlflow_server"):
        SlurmSettings(mlflow_store="sqlite:///x.db")
    with pytest.raises(ConfigError, match="password"):
        SlurmSettings(mlflow_server=True, mlflow_store="postgresql://me:secret@db/mlflow")
    s = SlurmSettings(mlflow_server=True, mlflow_store="sqlite:///db/m.db", storage="s3://b/recon",
                      workdir=str(tmp_path))
    assert s.resolved_mlflow_store() == f"sqlite:///{tmp_path}/db/m.db"
    assert s.resolved_mlflow_artifacts() == "s3://b/recon/mlflow-artifacts"
    with pytest.raises(ReconError, match="keep one"):
        render_sbatch(s, [*STUDY, "--tracking-uri", "http://elsewhere:5000"])


def test_wait_for_http_returns_when_it_answers_and_stops_when_the_server_died(tmp_path):
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        slurm.wait_for_http(f"http://127.0.0.1:{server.server_address[1]}/", timeout_s=10)
    finally:
        server.shutdown()
        server.server_close()
    dead = subprocess.Popen(["true"])
    dead.wait()
    log = tmp_path / "mlflow.log"
    log.write_text("Error: port already in use\n")
    started = time.monotonic()
    with pytest.raises(SlurmError, match="port already in use"):
        slurm.wait_for_http(f"http://127.0.0.1:{server.server_address[1]}/health", timeout_s=60, pid=dead.pid,
                            log=str(log))
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------- Slurm's answers

def test_submit_without_sbatch_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="slurm-client"):
        slurm.submit(SlurmSettings(workdir=str(tmp_path)), STUDY)


def test_submit_reports_slurms_refusal_and_keeps_the_script(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with pytest.raises(SlurmError, match="invalid partition specified") as err:
        slurm.submit(SlurmSettings(partition="nope", workdir=str(tmp_path)), STUDY)
    kept = list((tmp_path / "runs" / "slurm").glob("recon-*.sbatch"))
    assert len(kept) == 1 and str(kept[0]) in str(err.value)


def test_scontrol_records_are_parsed_with_spaces_in_values():
    line = ("JobId=7 JobName=recon UserId=root(0) JobState=CANCELLED Reason=None ExitCode=143:0 "
            "Command=/a b/x.sbatch NodeList=vm StdOut=/logs/recon-7.out")
    rec = slurm._fields(line)
    assert rec["JobState"] == "CANCELLED" and rec["ExitCode"] == "143:0" and rec["Command"] == "/a b/x.sbatch"
    assert rec["StdOut"] == "/logs/recon-7.out" and rec["UserId"] == "root(0)"


# ====================================================================== end to end on a real Slurm

ATTEMPTS_TRAINER = '''
"""The toy trainer, after leaving a marker per attempt in {marks} (and sleeping {sleep}s: time to cancel)."""
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, {folder!r})
import toy_trainer_base


def train(request, callbacks):
    marks = Path({marks!r}) / request.trial.trial_id
    marks.mkdir(parents=True, exist_ok=True)
    (marks / uuid.uuid4().hex).write_text("started")
    time.sleep({sleep})
    return toy_trainer_base.train(request, callbacks)
'''


def _toy_study(folder: Path, marks: Path, *, sleep: float, concurrent: int) -> Path:
    """The toy study of the fault drills (bag-of-words trainer on real SemEval lines): 2 formats x 2 seeds."""
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "toy_trainer.py", folder / "toy_trainer_base.py")
    (folder / "attempts.py").write_text(ATTEMPTS_TRAINER.format(folder=str(folder), marks=str(marks), sleep=sleep))
    text = (FIXTURES / "toy_study.yaml").read_text()
    text = (text.replace("formats: [C+M]", "formats: [C+M, OnlyC]").replace("training: {epochs: 3}", "training: {epochs: 1}")
            .replace("trainer: toy_trainer.py:train", "trainer: attempts.py:train")
            .replace("data: {max_eval: 200}", "data: {max_eval: 100}"))
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("ray:"))
    text += f"\nray: {{cpus_per_trial: 1, max_concurrent_trials: {concurrent}}}\noutput_dir: {folder / 'out'}\n"
    path = folder / "study.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def job_env(tmp_path, monkeypatch):
    """What a job needs from this process: a token file (by path), `ray` on PATH running this Python (a venv
    may hold recon but not Ray's console script), a short Ray temp root; removed afterwards."""
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_AUTH_MODE", "RECON_STORAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ray").write_text(f'#!/bin/sh\nexec {sys.executable} -m ray.scripts.scripts "$@"\n')
    (bin_dir / "ray").chmod(0o755)
    ray_root = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths live under it
    yield {"token": token.read_text(), "bin": bin_dir, "ray_root": ray_root}
    _kill_leftovers(str(ray_root))
    shutil.rmtree(ray_root, ignore_errors=True)


def _settings(cluster, tmp_path: Path, folder: Path, job_env: dict, name: str, mode: str = "shared") -> SlurmSettings:
    ray_args, port = ["--object-store-memory=150000000"], {}
    if mode == "symmetric":  # Ray's fixed default ports (52365, 10001, 8265...) may be taken by other Rays here
        port = {"port": free_port()}
        ray_args += ["--include-dashboard=false"] + [f"--{service}-port={free_port()}" for service in (
            "node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent",
            "metrics-export", "ray-client-server")]
    return SlurmSettings(
        nodes=1, cpus_per_node=cluster.cpus, job_name=name, storage=str(tmp_path / "storage"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", workdir=str(folder),
        script_dir=str(tmp_path / "slurm"), python=sys.executable, ray_temp_root=str(job_env["ray_root"]),
        activate=f"export PATH={job_env['bin']}:{Path(sys.executable).parent}:$PATH",
        ray_args=ray_args, node_wait_s=120, mode=mode, **port)


@pytest.fixture
def ray_stop_target():
    """A process outside slurmd's namespace that ``ray stop`` would stop if it saw it (its command line names
    ``default_worker.py``, one of Ray's process keywords; SIGTERM ends it): alive after a symmetric job means
    the job's ``ray stop`` stayed inside the namespace. Stopped here by its own pid."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", "default_worker.py"],
                            start_new_session=True)
    yield proc
    proc.kill()
    proc.wait(timeout=30)


def _ray_daemons_killed_by_epilog(cluster, job_id: str) -> list[str]:
    """The job's Ray daemons the harness's Epilog had to kill: none when the job stopped its own Ray."""
    return [k for k in cluster.epilog_kills(job_id) if "gcs_server" in k or "/raylet" in k]


def _processes_under(marker: str) -> list[int]:
    """Live processes whose command line names ``marker`` (this job's Ray temp root)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in cmd and state != "Z":
                pids.append(int(entry))
    return pids


def _kill_leftovers(marker: str) -> None:
    import signal

    for pid in _processes_under(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _no_ray_left(marker: str, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _processes_under(marker):
        time.sleep(1)
    return _processes_under(marker)


def _trial_runs(settings: SlurmSettings, spec) -> list:
    from recon.orchestration.study.tracker import StudyTracker

    tracker = StudyTracker(settings.tracking_uri, spec.name, create=False)
    return tracker._search("tags.`recon.role` = 'trial'")


def _attempts(marks: Path) -> dict[str, int]:
    return {d.name: len(list(d.iterdir())) for d in marks.iterdir()} if marks.is_dir() else {}


def _wait_ok(job_id: str, timeout_s: float = 600) -> slurm.SlurmJob:
    job = slurm.wait(job_id, timeout_s=timeout_s, poll_s=1)
    text = "".join(slurm.logs(job_id))
    assert job.state == "COMPLETED" and job.exit_code == "0:0", f"{job}\n{text[-6000:]}"
    assert "recon: the command exited with status 0" in text
    return job


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shared", "symmetric"])
def test_study_submitted_to_slurm_runs_every_trial_once(mode, slurm_cluster_fixture, tmp_path, job_env,
                                                        ray_stop_target, capsys):
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec

    started = time.monotonic()
    marks = tmp_path / "storage" / "attempts"
    path = _toy_study(tmp_path / "study", marks, sleep=0, concurrent=2)
    spec = load_spec(path)
    trials = expand(spec)
    assert len(trials) == 4
    settings = _settings(slurm_cluster_fixture, tmp_path, path.parent, job_env, "recon-e2e", mode)
    job_id = slurm.submit(settings, ["recon", "study", "run", str(path)])
    out = capsys.readouterr().out
    assert f"submitted Slurm job {job_id}" in out and str(settings.log_path(job_id)) in out
    assert f"recon ui {path} --tracking-uri {settings.tracking_uri}" in out
    assert job_id in {j.job_id for j in slurm.list_jobs()}

    job = _wait_ok(job_id)
    assert Path(job.log) == settings.log_path(job_id)
    runs = _trial_runs(settings, spec)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)
    assert all(r.info.status == "FINISHED" and r.data.metrics["test_metric"] > 0 for r in runs)
    summary = spec.resolved_output_dir() / "summary"
    assert (summary / "table5.md").is_file() and len((summary / "cells.csv").read_text().splitlines()) == 3
    assert all((tmp_path / "storage" / "results" / t.trial_id / "result.json").is_file() for t in trials)
    assert _attempts(marks) == {t.trial_id: 1 for t in trials}
    script = next((tmp_path / "slurm").glob("recon-e2e-*.sbatch")).read_text()
    commands = [ln for ln in script.replace(" \\\n  ", " ").splitlines() if not ln.startswith("#")]
    assert any(ln.startswith("srun ") and " ray symmetric-run " in ln for ln in commands) == (mode == "symmetric")
    assert job_env["token"] not in script and job_env["token"] not in "".join(slurm.logs(job_id))
    assert _no_ray_left(str(job_env["ray_root"])) == [], "the job left Ray processes behind"
    assert _ray_daemons_killed_by_epilog(slurm_cluster_fixture, job_id) == [], "the job did not stop its Ray"
    assert ray_stop_target.poll() is None, "the job's `ray stop` reached a process outside its namespace"
    assert slurm.cancel(job_id) is False  # already over
    with capsys.disabled():
        print(f"\n[slurm e2e] {mode}: study of {len(trials)} trials through Slurm: "
              f"{time.monotonic() - started:.1f}s")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shared", "symmetric"])
def test_cancelled_mid_grid_then_resubmitted_trains_nothing_twice(mode, slurm_cluster_fixture, tmp_path, job_env,
                                                                   ray_stop_target, capsys):
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec

    started = time.monotonic()
    marks = tmp_path / "storage" / "attempts"
    path = _toy_study(tmp_path / "study", marks, sleep=6, concurrent=1)
    spec = load_spec(path)
    trials = expand(spec)
    settings = _settings(slurm_cluster_fixture, tmp_path, path.parent, job_env, "recon-cancel", mode)
    command = ["recon", "study", "run", str(path)]
    first = slurm.submit(settings, command)
    results = tmp_path / "storage" / "results"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and not list(results.glob("*/result.json")):
        assert not slurm.status(first).done, "".join(slurm.logs(first))[-6000:]
        time.sleep(0.5)
    finished_before = {p.parent.name for p in results.glob("*/result.json")}
    assert finished_before, "no trial finished within the time limit"
    assert slurm.cancel(first) is True
    cancelled = slurm.wait(first, timeout_s=120, poll_s=1)
    assert cancelled.state == "CANCELLED", cancelled
    # the job stops its own Ray on scancel in both modes (symmetric: scancel's SIGTERM ends `ray symmetric-run`
    # before its own `ray stop`, so the script's exit trap stops the node's Ray); the Epilog kills nothing of it
    assert _no_ray_left(str(job_env["ray_root"])) == [], "scancel left Ray processes behind"
    assert _ray_daemons_killed_by_epilog(slurm_cluster_fixture, first) == [], "scancel: Ray not stopped by the job"
    finished_at_cancel = {p.parent.name for p in results.glob("*/result.json")}
    assert len(finished_at_cancel) < len(trials), "the cancel should land mid-grid"

    second = slurm.submit(settings, command)
    followed = "".join(slurm.logs(second, follow=True, poll_s=1))
    assert "recon: the command exited with status 0" in followed, followed[-6000:]
    _wait_ok(second)
    runs = _trial_runs(settings, spec)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)  # each exactly once
    assert all(r.info.status == "FINISHED" for r in runs)
    attempts = _attempts(marks)
    assert all(attempts[tid] == 1 for tid in finished_at_cancel), (finished_at_cancel, attempts)  # never retrained
    assert set(attempts) == {t.trial_id for t in trials}
    summary = spec.resolved_output_dir() / "summary"
    assert (summary / "table5.md").is_file() and len((summary / "cells.csv").read_text().splitlines()) == 3
    assert _no_ray_left(str(job_env["ray_root"])) == []
    assert _ray_daemons_killed_by_epilog(slurm_cluster_fixture, second) == [], "the job did not stop its Ray"
    assert ray_stop_target.poll() is None, "the job's `ray stop` reached a process outside its namespace"
    with capsys.disabled():
        print(f"\n[slurm e2e] {mode}: cancel after {len(finished_at_cancel)} of {len(trials)} trials, resubmit, "
              f"finish: {time.monotonic() - started:.1f}s; attempts per trial {sorted(attempts.values())}; "
              f"processes the epilog killed after the cancel: {len(slurm_cluster_fixture.epilog_kills(first))}")


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_cli_submit_stop_and_follow_with_the_jobs_own_mlflow_server(slurm_cluster_fixture, tmp_path, job_env,
                                                                      capsys):
    """Through the command line a user types: ``recon submit --slurm ... --slurm-mlflow-server``, ``recon jobs
    stop`` mid-grid, the same submit again, ``recon jobs logs --follow`` to the end; then the job's MLflow store
    (SQLite on the "shared" disk, artifacts beside the storage) holds every trial once after its server has
    stopped, and ``recon ui`` serves the runs and their artifacts again."""
    from mlflow.tracking import MlflowClient

    from recon.orchestration.cli.main import main
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec
    from recon.orchestration.study.tracker import StudyTracker

    started = time.monotonic()
    marks = tmp_path / "storage" / "attempts"
    path = _toy_study(tmp_path / "study", marks, sleep=6, concurrent=1)
    spec = load_spec(path)
    trials = expand(spec)
    argv = ["submit", "--slurm", "--slurm-job-name", "recon-cli", "--storage", str(tmp_path / "storage"),
            "--working-dir", str(path.parent), "--slurm-cpus-per-node", str(slurm_cluster_fixture.cpus),
            "--slurm-script-dir", str(tmp_path / "slurm"), "--slurm-python", sys.executable,
            "--slurm-ray-temp-root", str(job_env["ray_root"]), "--slurm-node-wait-s", "120",
            "--slurm-activate", f"export PATH={job_env['bin']}:{Path(sys.executable).parent}:$PATH",
            "--slurm-ray-args=--object-store-memory=150000000", "--slurm-mlflow-server",
            "--", "recon", "study", "run", str(path)]
    store, artifacts = f"sqlite:///{tmp_path}/slurm/mlflow.db", tmp_path / "storage" / "mlflow-artifacts"

    def submit() -> str:
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"recon ui {path} --tracking-uri {store} --artifacts-destination {artifacts}" in out
        return re.search(r"submitted Slurm job (\d+)", out).group(1)

    first = submit()
    results = tmp_path / "storage" / "results"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and not list(results.glob("*/result.json")):
        assert not slurm.status(first).done, "".join(slurm.logs(first))[-6000:]
        time.sleep(0.5)
    assert list(results.glob("*/result.json")), "no trial finished within the time limit"
    assert main(["jobs", "stop", first]) == 0
    assert capsys.readouterr().out.strip() == f"{first}: scancel sent"
    assert slurm.wait(first, timeout_s=120, poll_s=1).state == "CANCELLED"
    assert main(["jobs", "status", first]) == 0 and f"{first}  CANCELLED" in capsys.readouterr().out
    port = lambda job: 20000 + int(job) % SlurmSettings().port_slots * 200 + 9  # noqa: E731
    assert not _port_open(port(first)), "scancel left the job's MLflow server running"
    assert _no_ray_left(str(job_env["ray_root"])) == []
    finished_at_cancel = {p.parent.name for p in results.glob("*/result.json")}
    assert len(finished_at_cancel) < len(trials)

    second = submit()
    assert main(["jobs", "logs", second, "--follow"]) == 0
    followed = capsys.readouterr().out
    assert f"recon: MLflow server at http://127.0.0.1:{port(second)}" in followed, followed[-6000:]
    assert "recon: the command exited with status 0" in followed and f"Slurm job {second} COMPLETED" in followed
    assert not _port_open(port(second)), "the job's MLflow server outlived the job"
    assert main(["jobs", "list", "--slurm", "--name", "recon-cli"]) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"^{first}\s+CANCELLED", listed, re.M) and re.search(rf"^{second}\s+COMPLETED", listed, re.M)

    # The server is gone; its store and artifacts are not.
    tracker = StudyTracker(store, spec.name, create=False)
    runs = tracker._search("tags.`recon.role` = 'trial'")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials)  # each once
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)  # stored by the server...
    assert list(artifacts.rglob("result.json"))                                   # ...beside the storage
    assert _attempts(marks)[next(iter(finished_at_cancel))] == 1
    assert (spec.resolved_output_dir() / "summary" / "table5.md").is_file()

    ui_port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "recon.orchestration.cli.main", "ui", "--tracking-uri", store,
                           "--artifacts-destination", str(artifacts), "--port", str(ui_port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        slurm.wait_for_http(f"http://127.0.0.1:{ui_port}/health", timeout_s=120, pid=ui.pid)
        client = MlflowClient(f"http://127.0.0.1:{ui_port}")
        run = runs[0]
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "result.json" in files, files
        local = client.download_artifacts(run.info.run_id, "result.json", str(tmp_path / "downloaded"))
        assert '"test"' in Path(local).read_text()
    finally:
        import signal

        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    with capsys.disabled():
        print(f"\n[slurm e2e] CLI: submit with its own MLflow server, stop after {len(finished_at_cancel)} of "
              f"{len(trials)} trials, submit again, follow to the end: {time.monotonic() - started:.1f}s")
