"""A study refuses before compute: spec mistakes, missing inputs, no data and no network, nothing runnable; on a
fresh machine it fetches the public data it needs (from a local mirror here) and runs; its parent MLflow run
never stays RUNNING."""
from __future__ import annotations

import functools
import shutil
import sqlite3
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recon.orchestration.cli.main import main
from recon.orchestration.study.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
FIXTURES = Path(__file__).parent / "fixtures" / "studies"


def _write(tmp_path: Path, body: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body + f"\noutput_dir: {tmp_path / 'out'}\n")
    return path


def _toy(tmp_path: Path, data_dir: Path | None = None, datasets: str = "[semeval]") -> Path:
    """The toy trainer's study (one trial), reading data from ``data_dir``."""
    shutil.copy(FIXTURES / "toy_trainer.py", tmp_path / "toy_trainer.py")
    text = (FIXTURES / "toy_study.yaml").read_text().replace("seeds: [42, 43]", "seeds: [42]")
    text = text.replace("datasets: [semeval]", f"datasets: {datasets}")
    if data_dir is not None:
        text = text.replace("data: {max_eval: 200}", f"data: {{max_eval: 200, data_dir: {data_dir}}}")
    return _write(tmp_path, text)


# ------------------------------------------------------------------ the spec file itself

@pytest.mark.parametrize("body,expected", [
    ("name: s\nname: t\nmodels: [{name: M}]\ngrids: [{datasets: [semeval]}]",
     "line 2, field 'name': duplicate key (first set on line 1)"),
    ("name: s\nmodels: [{name: M}]\ngrids: [{datasets: [semeval], splits: [0.1], splits: [1.0]}]",
     "field 'grids.0.splits': duplicate key"),
    ("name: s\nmodels: [{name: M}]\ngrids: [{datasets: [semeval]}]\nseeds: [true]",
     "line 4, field 'seeds.0': Input should be a valid integer"),
    ("name: s\nmodels: [{name: M}]\ngrids: [{datasets: [semeval]}]\nseeds: [42, 42]",
     "field 'seeds': seed 42 is listed more than once"),
    ("name: s\nmodels: [{name: M}]\ngrids: [{datasets: [semeval], seeds: [-1]}]",
     "field 'grids.0.seeds.0': Input should be greater than or equal to 0"),
    ("name: s\nmodels: [{name: M}]\ngrids: [{datasets: [semeval]}]\ntraning: {lr: 1}",
     "line 4, field 'traning': unknown field (not in the study schema); did you mean 'training'?"),
    ("name: s\nmodels: [{name: M}]\ngrids: [{datasets: [semeval], splts: [0.1]}]\ntraining: {lrr: 1}",
     "did you mean 'splits'?"),
    ("name: s\nmodels: [{name: MiniLM}]\ngrids:\n  - datasets: [semeval]\n    models: [MiniLM, MiniLm]",
     "line 5, field 'grids.0.models.1': unknown model 'MiniLm'; the study's models are MiniLM; did you mean 'MiniLM'?"),
])
def test_spec_mistakes_are_located(tmp_path, capsys, body, expected):
    path = _write(tmp_path, body)
    assert main(["study", "plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err and "Traceback" not in err


def test_did_you_mean_reaches_nested_configs(tmp_path, capsys):
    path = _write(tmp_path, "name: s\nmodels: [{name: M}]\ngrids: [{datasets: [semeval]}]\ntraining: {lrr: 1}\n"
                            "pretrain: {cp: {objective: cp, stepz: 3}}")
    assert main(["study", "plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "field 'training.lrr': unknown field (not in the study schema); did you mean 'lr'?" in err
    assert "field 'pretrain.cp.stepz': unknown field (not in the study schema); did you mean 'steps'?" in err


# ------------------------------------------------------------------ missing inputs

def test_missing_checkpoint_is_a_problem_for_plan_and_a_refusal_for_run(tmp_path, capsys):
    path = _write(tmp_path, f"name: s\nmodels: [{{name: M, checkpoint: {tmp_path / 'no-ckpt'}}}]\n"
                            f"grids: [{{datasets: [semeval], splits: [0.01]}}]\nseeds: [42]\n"
                            f"data: {{data_dir: {SHARED}}}")
    assert main(["study", "plan", str(path)]) == 1
    out = capsys.readouterr().out
    assert "problems (`recon study run` refuses until they are fixed" in out
    assert f"model M's checkpoint: {tmp_path / 'no-ckpt'} does not exist" in out
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "study s did not start (1 problem; nothing was run or written)" in err and "no-ckpt" in err
    assert not (tmp_path / "out" / "mlflow.db").exists() and not (tmp_path / "out" / "results").exists()


def test_paper_study_names_its_missing_corpus(tmp_path, capsys):
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / "paper.yaml"  # its corpus, ../corpus/wikidata, is not built there
    path.write_text((ROOT / "studies" / "paper.yaml").read_text())
    assert main(["study", "plan", str(path)]) == 1
    out = capsys.readouterr().out
    corpus = tmp_path / "corpus" / "wikidata"
    assert f"pre-training stage cp: corpus {corpus} does not exist" in out
    assert f"pre-training stage mtb: corpus {corpus} does not exist" in out
    assert f"recon corpus build ... --out {corpus}" in out


def test_offline_fresh_machine_refuses_within_seconds(tmp_path, capsys, monkeypatch):
    """No data beside the clone, no server: exit 2 fast, naming the files and how to get them; no store made."""
    monkeypatch.setenv("RECON_DATA_DIR", str(tmp_path / "data"))
    path = _toy(tmp_path)
    start = time.monotonic()
    assert main(["study", "run", str(path), "--base-url", "http://127.0.0.1:9"]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert "the study needs 4 data file(s) that are not here (semeval/" in err
    assert "`recon data fetch semeval` gets them" in err and "RECON_DATA_DIR" in err
    assert not (tmp_path / "out" / "mlflow.db").exists()
    # nothing half-made is left: not the run's log (nor its folders), not an empty folder for the data
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_a_study_where_nothing_can_run_exits_non_zero(tmp_path, capsys):
    """TACRED cannot be fetched: its cells are unavailable, and when they are all there is, the run refuses."""
    path = _toy(tmp_path, data_dir=tmp_path / "data", datasets="[tacred]")
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "none of the 1 unfinished trials can run here" in err and "LDC" in err
    assert main(["study", "plan", str(path)]) == 1  # the plan says so too, rather than "runs the rest"
    assert "no unfinished trial can run here, so `recon study run` would stop (exit 2)" in capsys.readouterr().out


# ------------------------------------------------------------------ the parent run's state

def _parent_status(spec) -> str:
    db = sqlite3.connect(spec.resolved_output_dir() / "mlflow.db")
    (status,) = db.execute("select r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                           "where t.key = 'recon.role' and t.value = 'study'").fetchone()
    return status


@pytest.mark.parametrize("stop,status", [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")])
def test_parent_run_ends_failed_or_killed(tmp_path, monkeypatch, stop, status):
    import recon.orchestration.study.runner as runner

    monkeypatch.setattr(runner, "_init_ray", lambda *a, **k: False)
    monkeypatch.setattr(runner, "cluster_problems", lambda *a, **k: [])

    def stopped(*args, **kwargs):
        raise stop("stopped in the middle of the grid")

    monkeypatch.setattr(runner, "_run_tracked", stopped)
    spec = load_spec(_toy(tmp_path, data_dir=SHARED))
    with pytest.raises(stop):
        runner.run_study(spec, log=lambda line: None)
    assert _parent_status(spec) == status


# ------------------------------------------------------------------ fetched from a mirror, then run

@pytest.fixture
def mirror(tmp_path):
    """A local server laid out as <repository>/<commit>/<path>, holding copies of the shared files."""
    from recon.data_prep.fetch import SOURCES

    root = tmp_path / "www"
    for source in SOURCES:
        if (SHARED / source.relpath).is_file():
            target = root / source.repo / source.commit / source.repo_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(SHARED / source.relpath)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow
def test_fresh_machine_fetches_what_the_study_needs_then_runs(tmp_path, capsys, monkeypatch, mirror):
    data = tmp_path / "data"
    monkeypatch.setenv("RECON_DATA_DIR", str(data))
    monkeypatch.setenv("RECON_DATA_BASE_URL", mirror)  # the config twin of --base-url
    path = _toy(tmp_path)
    assert main(["study", "run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "data: 4 file(s) of semeval missing here; fetching from " + mirror in out
    for name in ("train.txt", "dev.txt", "test.txt", "rel2id.json"):
        assert (data / "semeval" / name).read_bytes() == (SHARED / "semeval" / name).read_bytes()
    assert "1 run now, 0 failed; 1 in MLflow" in out
    spec = load_spec(path)
    assert _parent_status(spec) == "FINISHED"
