"""A study submitted to a real Ray cluster (dashboard, token auth) is browsed from the submitting side after the
cluster has stopped, with the command the job printed.

The cluster is tests/cluster_harness.py's: a head node (the job's driver runs there, in Ray's temporary copy of
the project) and a worker node that sees neither the user's project folder nor $HOME; ``cluster.shared`` stands
for the NFS every machine mounts. Stopping the cluster removes Ray's temp dir, the job's working copy with it.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cluster_harness import two_node_cluster, unshare_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RECON_DATA_DIR") or ROOT.parent / "shared" / "datasets")
FIXTURES = ROOT / "tests" / "fixtures" / "studies"
RECON = str(Path(sys.executable).with_name("recon"))
_UNSHARE = unshare_available()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_UNSHARE is not None, reason=f"two-node cluster harness: {_UNSHARE}")]

TINY = f"""# two trials of the toy trainer, on the worker node
name: tiny-sub
models:
  - {{name: Toy, encoder: toy-bag-of-words, compare_to: BERT}}
grids:
  - {{table: table5, datasets: [semeval], splits: [0.1], formats: [C+M]}}
seeds: [42, 43]
training: {{epochs: 2}}
data: {{max_eval: 100, data_dir: {DATA}}}
trainer: toy_trainer.py:train
ray: {{cpus_per_trial: 1, max_concurrent_trials: 2, trial_resources: {{recon_worker: 1}}}}
"""


def _line(text: str, prefix: str) -> str:
    """The first line of ``text`` that starts with ``prefix`` (after indentation), without the prefix."""
    return next(l.strip()[len(prefix):].strip() for l in text.splitlines() if l.strip().startswith(prefix))


def test_submitted_study_is_browsed_with_the_printed_command_after_the_cluster_stopped(tmp_path, monkeypatch):
    from recon.orchestration.study.tracker import StudyTracker

    monkeypatch.setenv("PATH", f"{Path(RECON).parent}{os.pathsep}{os.environ.get('PATH', '')}")  # nodes run `recon`
    project = tmp_path / "project"  # the user's folder: uploaded with the job, invisible to the worker node
    project.mkdir()
    shutil.copy(FIXTURES / "toy_trainer.py", project / "toy_trainer.py")
    (project / "tiny.yaml").write_text(TINY)
    with two_node_cluster(tmp_path, hidden=[project]) as cluster:
        storage = cluster.shared / "recon"
        env = cluster.client_env()
        env.pop("RECON_STORAGE", None), env.pop("MLFLOW_TRACKING_URI", None)
        submit = subprocess.run([RECON, "submit", "--address", cluster.dashboard_url, "--storage", str(storage),
                                 "--follow", "--", "recon", "study", "run", "tiny.yaml"],
                                env=env, cwd=project, capture_output=True, text=True, timeout=540)
        out = submit.stdout + submit.stderr
        assert submit.returncode == 0, out[-5000:]
        job_id = out.splitlines()[0].split()[1].rstrip(":")
        assert "2 run now, 0 failed; 2 in MLflow" in out
        browse, tables = _line(out, "browse:"), _line(out, "tables and plots:")
        summary = _line(out, "summary:")
        assert out.count(f"browse: {browse}") == 2  # printed by the job, repeated once it ended
        status = subprocess.run([RECON, "jobs", "status", job_id, "--address", cluster.dashboard_url],
                                env=env, cwd=project, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0 and f"browse: {browse}" in status.stdout, status.stdout + status.stderr
        assert f"tables and plots: {tables}" in status.stdout
        logs = subprocess.run([RECON, "jobs", "logs", job_id, "--address", cluster.dashboard_url],
                              env=env, cwd=project, capture_output=True, text=True, timeout=120)
        assert logs.returncode == 0 and logs.stdout.count(f"browse: {browse}") == 2, logs.stdout + logs.stderr
        job_temp = cluster.temp_dir
        assert any(job_temp.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
    assert not job_temp.exists()  # the cluster is stopped: Ray's copy of the job's working dir is gone

    home = storage / "studies" / "tiny-sub"
    assert tables == str(home / "summary") and summary == "2 trials, 1 cells"
    assert (home / "summary" / "table5.md").is_file()
    argv = shlex.split(browse)
    assert argv[:3] == ["recon", "ui", "--tracking-uri"] and str(home / "mlflow.db") in argv[3]
    shown = subprocess.run([RECON, *argv[1:], "--print-only"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert shown.returncode == 0 and f"(store {argv[3]})" in shown.stdout, shown.stdout + shown.stderr
    assert "/#/experiments/" in shown.stdout  # the UI opens on the study's experiment: the store holds it
    tracker = StudyTracker(argv[3], "tiny-sub", create=False)
    runs = tracker._search("tags.`recon.role` = 'trial'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    print(f"browse: {browse}\ntables and plots: {tables}\ntrial runs in that store after the stop: {len(runs)}")
