"""Check before compute: a run that could not finish or keep its outputs refuses at once, naming each problem and
its fix, with nothing written; results computed before a write fails are kept elsewhere, never lost."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recon.core.atomic import umask_mode, write_text_atomic, write_texts_or_keep
from recon.core.preflight import Preflight, PreflightError
from recon.orchestration.cli.main import main

DATA = str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
FT = ["finetune", "--dataset", "semeval", "--data-dir", DATA, "--split", "0.01", "--max-train-steps", "1",
      "--batch-size", "4", "--max-eval", "8", "--epochs", "1", "--max-length", "24"]


def _refusal(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("recon: error: ") and "did not start" in err and "Traceback" not in err
    return err


def test_out_that_is_a_file_or_under_one(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("hello")
    err = _refusal(capsys, FT + ["--out", str(afile)])
    assert f"--out {afile} is a file, not a folder" in err
    err = _refusal(capsys, FT + ["--out", str(afile / "sub")])
    assert f"lies under the file {afile}" in err
    err = _refusal(capsys, ["fewshot", "--data-dir", DATA, "--train-episodes", "0", "--episodes", "2",
                            "--out", str(afile)])
    assert "recon fewshot did not start" in err
    assert afile.read_text() == "hello" and sorted(os.listdir(tmp_path)) == ["afile"]


def test_every_problem_is_named_at_once(capsys, tmp_path):
    """A missing dataset, a device this machine lacks and an unwritable --out come back in one message."""
    err = _refusal(capsys, ["finetune", "--dataset", "tacred", "--data-dir", str(tmp_path), "--device", "cuda",
                            "--out", "/proc/recon-out"])
    assert "3 problems" in err and "dataset tacred" in err and "--device cuda asks for CUDA" in err
    assert "--out /proc/recon-out cannot be written" in err
    assert not any(tmp_path.iterdir())


def test_missing_encoder_checkpoint_is_refused(capsys, tmp_path):
    err = _refusal(capsys, FT + ["--encoder", str(tmp_path / "no-such-model")])
    assert "--encoder" in err and "no-such-model" in err


def test_seed_outside_what_torch_accepts(capsys):
    assert main(FT + ["--seed", "99999999999999999999"]) == 2
    assert "--seed: must be <= 9223372036854775807" in capsys.readouterr().err
    pf = Preflight("x")
    for bad in (-1, True, 1.5, 2 ** 63):
        pf.seed(bad)
    assert len(pf.problems) == 4


def test_preflight_writable_dir_probes_for_real(tmp_path):
    pf = Preflight("recon test")
    assert pf.writable_dir(tmp_path / "new" / "deeper", "--out")          # creatable: fine, and not created
    assert not (tmp_path / "new").exists()
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert not pf.writable_dir(tmp_path / "link", "--out")
    assert "is a broken link, not a folder" in pf.problems[0].what
    assert not pf.new_file(tmp_path, "--to")
    with pytest.raises(PreflightError, match=r"recon test did not start \(2 problems"):
        pf.raise_if_any()
    assert not any(p.name.startswith(".recon-preflight-") for p in tmp_path.iterdir())


def test_storage_uri_is_written_and_read_back(tmp_path):
    pf = Preflight("x")
    assert pf.storage(f"file://{tmp_path}/store")
    assert not pf.storage("/proc/recon-store")
    assert "cannot be written" in pf.problems[0].what


def test_outputs_kept_when_the_folder_cannot_take_them(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    kept, error = write_texts_or_keep(blocked, {"metrics.json": "{}\n"})
    try:
        assert error is not None and kept != blocked and (kept / "metrics.json").read_text() == "{}\n"
        assert kept.name.startswith("recon-unsaved-")
        assert (kept / "metrics.json").stat().st_mode & 0o777 == umask_mode()
    finally:
        for child in kept.iterdir():
            child.unlink()
        kept.rmdir()
    kept, error = write_texts_or_keep(tmp_path / "ok", {"a.txt": "a"})
    assert error is None and kept == tmp_path / "ok" and (kept / "a.txt").read_text() == "a"


def test_written_files_follow_the_umask(tmp_path):
    """Atomic writes go through a temporary file (mode 0600); the result is re-moded so a lab can read it."""
    old = os.umask(0o027)
    try:
        path = write_text_atomic(tmp_path / "m.json", "{}")
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_finetune_reports_where_outputs_went(capsys, tmp_path, monkeypatch):
    """--out was fine at the start and is gone at the end: exit 1, the results in a named folder."""
    import recon.models.train.finetune as finetune

    out = tmp_path / "out"
    real = finetune.write_texts_or_keep

    def vanish_then_write(out_dir, files):
        Path(out_dir).write_text("someone else's file")   # a file appears where the folder goes
        return real(out_dir, files)

    monkeypatch.setattr(finetune, "write_texts_or_keep", vanish_then_write)
    assert main(FT + ["--out", str(out)]) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    kept = Path(summary["saved_to"])
    try:
        assert "could not write the outputs where asked" in captured.err and str(kept) in captured.err
        assert json.loads((kept / "metrics.json").read_text())["test"] == summary["test"]
        assert (kept / "predictions.jsonl").read_text().count("\n") == 8
    finally:
        for child in kept.iterdir():
            child.unlink()
        kept.rmdir()


def test_published_folders_follow_the_umask(tmp_path):
    """Checkpoints and corpora are built in a mkdtemp folder (0700) and renamed into place."""
    import tempfile

    from recon.core.atomic import publish_dir

    staging = Path(tempfile.mkdtemp(dir=tmp_path))
    (staging / "model.safetensors").write_bytes(b"x")
    old = os.umask(0o022)
    try:
        final = publish_dir(staging, tmp_path / "final")
    finally:
        os.umask(old)
    assert final.stat().st_mode & 0o777 == 0o755
    assert (final / "model.safetensors").stat().st_mode & 0o777 == 0o644
