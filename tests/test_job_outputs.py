"""A submitted job keeps its MLflow store, tables and run folders where they outlive it (job_outputs' rule).

Fast tests fake "a submitted job" the two ways the rule recognises one: recon submit's environment
variable, and a current folder inside Ray's ``runtime_resources/working_dir_files``. The end-to-end test on a
real Ray cluster with a dashboard (submit, stop the cluster, open the store with the printed command) is
``tests/test_submit_outputs.py``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recon.orchestration.cli.main import main
from recon.orchestration.cluster import job_outputs as jo

FIXTURES = Path(__file__).parent / "fixtures" / "studies"


@pytest.fixture
def job_dir(tmp_path, monkeypatch) -> Path:
    """A fake Ray Job working directory (as Ray unpacks one) that this test runs in."""
    pkg = tmp_path / "ray" / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    (pkg / "sub").mkdir(parents=True)
    monkeypatch.chdir(pkg / "sub")
    for name in ("RECON_STORAGE", "MLFLOW_TRACKING_URI", jo.SUBMITTED_ENV):
        monkeypatch.delenv(name, raising=False)
    return pkg


def test_a_job_is_recognised_by_its_folder_or_by_recon_submits_variable(tmp_path, monkeypatch, job_dir):
    assert jo.job_working_dir() == job_dir  # the package, even from a folder below it
    monkeypatch.chdir(tmp_path)
    assert jo.job_working_dir() is None
    monkeypatch.setenv(jo.SUBMITTED_ENV, jo.SUBMITTED_RAY_JOB)
    assert jo.job_working_dir() == tmp_path.resolve()


def test_recon_submit_marks_the_job():
    from recon.orchestration.cluster.jobs import runtime_env

    assert runtime_env(working_dir=None)["env_vars"][jo.SUBMITTED_ENV] == jo.SUBMITTED_RAY_JOB


def test_outputs_in_the_job_folder_move_to_a_storage_path(tmp_path, job_dir):
    shared = tmp_path / "shared"
    assert jo.job_output_dir("study", "tiny", job_dir / "runs" / "tiny", str(shared)) == shared / "studies" / "tiny"
    assert jo.job_output_dir("sweep", "sw", job_dir / "runs" / "sw", f"file://{shared}") == shared / "sweeps" / "sw"
    # an output folder the user named outside the job folder (NFS) is kept; object storage cannot take it
    assert jo.job_output_dir("study", "tiny", tmp_path / "nfs" / "out", str(shared)) is None
    assert jo.job_output_dir("study", "tiny", job_dir / "runs" / "tiny", "s3://bucket/recon") is None
    assert jo.job_output_dir("study", "tiny", job_dir / "runs" / "tiny", str(job_dir / "store")) is None
    assert jo.job_output_problems("study", str(shared), jo_sqlite(shared / "studies" / "tiny")) == []


def jo_sqlite(folder: Path) -> str:
    from recon.orchestration.tracking.uri import sqlite_uri

    return sqlite_uri(folder / "mlflow.db")


def test_what_cannot_move_is_refused_with_the_flag_to_add(job_dir):
    on_s3 = jo.job_output_problems("study", "s3://bucket/recon", jo_sqlite(job_dir / "runs" / "tiny"))
    assert len(on_s3) == 1
    assert "object storage" in on_s3[0].what and str(job_dir) in on_s3[0].what
    assert "--tracking-uri http://" in on_s3[0].fix
    assert jo.job_output_problems("study", "s3://bucket/recon", "http://10.0.0.5:5000") == []
    inside = jo.job_output_problems("sweep", str(job_dir / "runs" / "sw"), jo_sqlite(job_dir / "runs" / "sw"))
    assert [p.what.split("'s ")[1].split()[0] for p in inside] == ["storage", "MLflow"]
    assert "recon submit --storage" in inside[0].fix


def test_pretrain_out_and_store_move_to_the_storage(tmp_path, job_dir):
    shared = tmp_path / "shared"
    out, uri = jo.job_pretrain_place("runs/pretrain", None, str(shared))
    assert out == str(shared / "pretrain") and uri == jo_sqlite(shared / "pretrain")
    assert jo.job_pretrain_place("runs/pretrain", "http://h:5000", "s3://b/r") == ("s3://b/r/pretrain", "http://h:5000")
    assert jo.job_pretrain_place(str(tmp_path / "nfs"), None, str(shared)) == (str(tmp_path / "nfs"), None)


def test_object_storage_keeps_a_copy_of_the_summary(tmp_path, job_dir):
    summary = job_dir / "runs" / "tiny" / "summary"
    summary.mkdir(parents=True)
    (summary / "table5.md").write_text("| a |\n")
    kept = jo.keep_summary("study", "tiny", summary, f"file://{tmp_path / 'bucket'}")
    assert kept == str(tmp_path / "bucket" / "studies" / "tiny" / "summary")
    assert (Path(kept) / "table5.md").read_text() == "| a |\n"
    outside = tmp_path / "nfs" / "summary"
    assert jo.keep_summary("study", "tiny", outside, str(tmp_path / "bucket")) == str(outside)


def test_the_browse_line_names_the_store_itself_in_a_job(tmp_path, monkeypatch, job_dir):
    uri = jo_sqlite(tmp_path / "shared" / "studies" / "tiny")
    assert jo.browse_command(uri, "tiny.yaml") == f"recon ui --tracking-uri {uri}"
    monkeypatch.chdir(tmp_path)
    assert jo.browse_command(uri, "tiny.yaml") == "recon ui tiny.yaml"


def test_closing_lines_are_the_last_of_each_kind():
    log = ("summary: 2 trials -> /a\ntables and plots: /old\n(pid=1) noise\ntables and plots: /new\n"
           "browse: recon ui --tracking-uri sqlite:////s/mlflow.db\n")
    assert jo.closing_lines(log) == ["tables and plots: /new", "browse: recon ui --tracking-uri sqlite:////s/mlflow.db"]
    assert jo.closing_lines("nothing here\n") == []


def test_a_submitted_study_without_storage_is_refused_before_it_starts(job_dir, capsys):
    shutil.copy(FIXTURES / "toy_trainer.py", job_dir / "toy_trainer.py")
    shutil.copy(FIXTURES / "toy_study.yaml", job_dir / "tiny.yaml")
    assert main(["study", "run", str(job_dir / "tiny.yaml")]) == 2
    err = capsys.readouterr().err
    assert "storage location" in err and "inside the job's working directory" in err
    assert "recon submit --storage" in err and "--tracking-uri http://" in err
    assert not (job_dir / "sub" / "runs" / "toy" / "mlflow.db").exists()


def test_a_submitted_sweep_without_storage_is_refused_before_it_starts(job_dir, capsys):
    shutil.copy(FIXTURES.parent / "sweep" / "base.yaml", job_dir / "sweep.yaml")
    assert main(["sweep", "run", str(job_dir / "sweep.yaml")]) == 2
    err = capsys.readouterr().err
    assert "a submitted sweep's storage location" in err and "a submitted sweep's MLflow store" in err
    assert not list(job_dir.rglob("mlflow.db"))


def test_a_submitted_pretraining_run_moves_out_and_its_store_to_the_storage(tmp_path, job_dir, monkeypatch, capsys):
    """--out's default and the default SQLite store would land in the job's folder: both move to the storage
    (what the run then checks first is the corpus, so a missing one stops it there and shows where it went)."""
    monkeypatch.setenv("RECON_STORAGE", str(tmp_path / "shared"))
    assert main(["pretrain", "--objective", "cp", "--corpus", str(tmp_path / "no-corpus"), "--workers", "1"]) == 2
    captured = capsys.readouterr()
    assert f"-> {tmp_path / 'shared' / 'pretrain' / 'pretrain-cp'}" in captured.out
    assert "a submitted pre-training run's" not in captured.err  # nothing left in the job's folder to refuse
    assert not list(job_dir.rglob("mlflow.db"))
    monkeypatch.delenv("RECON_STORAGE")  # no storage: nowhere to move them, so the run is refused for both
    assert main(["pretrain", "--objective", "cp", "--corpus", str(tmp_path / "no-corpus"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "a submitted pre-training run's storage location" in err and "recon submit --storage" in err
    assert "a submitted pre-training run's MLflow store" in err
