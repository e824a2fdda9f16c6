"""Fault drills: the study driver and its storage under failure (issue "Proof under load").

Each drill runs the toy study of ``tests/fixtures/studies`` (a bag-of-words trainer on real SemEval
lines, seconds per trial) on a local Ray Tune, or exercises the storage / checkpoint writers on a
real full disk (a small tmpfs; needs root, skipped otherwise):

* trials that raise (a NaN loss -> ``TrainingDiverged``, an out-of-memory error) are retried per
  ``ray: {max_retries: N}``, then reported failed; the rest of the grid finishes and is tabulated;
* the driver SIGKILLed mid-grid, then ``recon study resume``: every trial ends exactly once in MLflow
  and the tables equal those of an uninterrupted run with the same seeds;
* a disk that fills up while a result or a checkpoint is written: a clear error, the previous
  version intact, no temporary left, and the write (and the study) go on once space is back;
* 200 instant trials, 4 at a time: no lost metric, no lock error, one MLflow run each.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recon.orchestration.study.plan import expand
from recon.orchestration.study.spec import load_spec
from recon.orchestration.study.tracker import StudyTracker

FIXTURES = Path(__file__).parent / "fixtures" / "studies"
TOY_TRAINER = FIXTURES / "toy_trainer.py"


def _study(folder: Path, *, formats: str = "[C+M]", seeds: str = "[42]", trainer: str = "toy_trainer.py:train",
           ray: str = "{cpus_per_trial: 1, num_cpus: 2, max_concurrent_trials: 2}", epochs: int = 3) -> Path:
    """The toy study in ``folder`` (its own output dir, MLflow store and storage)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TOY_TRAINER, folder / "toy_trainer.py")
    text = (FIXTURES / "toy_study.yaml").read_text()
    text = (text.replace("formats: [C+M]", f"formats: {formats}").replace("seeds: [42, 43]", f"seeds: {seeds}")
            .replace("trainer: toy_trainer.py:train", f"trainer: {trainer}")
            .replace("training: {epochs: 3}", f"training: {{epochs: {epochs}}}"))
    text = "\n".join(line for line in text.splitlines() if not line.startswith("ray:")) + f"\nray: {ray}\n"
    path = folder / "study.yaml"
    path.write_text(text + f"output_dir: {folder / 'out'}\n")
    return path


def _trial_runs(spec, status: str | None = None) -> list:
    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, create=False)
    runs = tracker._search("tags.`recon.role` = 'trial'")
    return [r for r in runs if status is None or r.info.status == status]


def _cells(spec) -> list[str]:
    return (spec.resolved_output_dir() / "summary" / "cells.csv").read_text().splitlines()


def _recon(*args: str, **kwargs) -> subprocess.Popen:
    """``recon ...`` as a child process in its own session (so that its Ray processes can be reaped)."""
    return subprocess.Popen([sys.executable, "-c", "import sys; from recon.orchestration.cli.main import main; "
                             "sys.exit(main(sys.argv[1:]))", *args], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _reap(proc: subprocess.Popen) -> None:
    """Kill what is left of the process group this test started (Ray's raylet, GCS and workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


# ------------------------------------------------------------------------ failing trials

FAILING_TRAINER = '''
"""Toy trainer whose OnlyC trials diverge (NaN loss) and OnlyM trials run out of memory, every attempt."""
from pathlib import Path

import toy_trainer_base

ATTEMPTS = Path({attempts!r})


def train(request, callbacks):
    fmt = request.config.input_format
    with ATTEMPTS.open("a") as fh:
        fh.write(f"{{request.trial.trial_id}} {{fmt}}\\n")
    if fmt == "OnlyC":
        from recon.models.train.loop import TrainingDiverged

        raise TrainingDiverged(1, 3, float("nan"))
    if fmt == "OnlyM":
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
    return toy_trainer_base.train(request, callbacks)
'''


def _failing_study(folder: Path) -> Path:
    path = _study(folder, formats="[C+M, OnlyC, OnlyM]",
                  ray="{cpus_per_trial: 1, num_cpus: 2, max_concurrent_trials: 2, max_retries: 1}",
                  trainer="failing_trainer.py:train")
    # The trainer's source is shipped to the workers: the toy trainer it calls must be importable there.
    code = FAILING_TRAINER.format(attempts=str(folder / "attempts.txt"))
    code = code.replace("import toy_trainer_base\n", "import sys\nsys.path.insert(0, {!r})\nimport toy_trainer_base\n"
                        .format(str(folder)))
    (folder / "failing_trainer.py").write_text(code)
    shutil.copy(TOY_TRAINER, folder / "toy_trainer_base.py")
    return path


@pytest.fixture(scope="module")
def failed_study(tmp_path_factory):
    """One run of a 3-trial study in which two trials fail on every attempt (max_retries: 1)."""
    from recon.orchestration.cli.main import main

    folder = tmp_path_factory.mktemp("failing")
    path = _failing_study(folder)
    rc = main(["study", "run", str(path)])
    spec = load_spec(path)
    return {"rc": rc, "spec": spec, "folder": folder, "trials": expand(spec)}


@pytest.mark.slow
def test_failing_trials_are_retried_then_reported_and_the_rest_finishes(failed_study):
    spec, trials = failed_study["spec"], failed_study["trials"]
    assert failed_study["rc"] == 1  # the command says the study had failures
    attempts = (failed_study["folder"] / "attempts.txt").read_text().split("\n")
    by_format: dict[str, int] = {}
    for line in filter(None, attempts):
        by_format[line.split()[1]] = by_format.get(line.split()[1], 0) + 1
    assert by_format == {"C+M": 1, "OnlyC": 2, "OnlyM": 2}  # 1 try + max_retries: 1 for each failing trial
    finished = _trial_runs(spec, "FINISHED")
    ok = next(t for t in trials if t.format == "C+M")
    assert [r.data.tags["trial_id"] for r in finished] == [ok.trial_id]
    assert finished[0].data.metrics["test_metric"] > 0
    cells = _cells(spec)
    assert len(cells) == 2 and ",C+M," in cells[1]  # header + the one finished cell
    store = spec.resolved_output_dir()
    for trial in trials:  # a failed trial publishes no result: a resume runs it again
        assert (store / "results" / trial.trial_id / "result.json").is_file() == (trial is ok)


@pytest.mark.slow
def test_failed_trial_has_a_failed_mlflow_run_with_its_error_and_the_table_says_why(failed_study):
    spec, trials = failed_study["spec"], failed_study["trials"]
    failed = {r.data.tags["trial_id"]: r for r in _trial_runs(spec, "FAILED")}
    expected = {t.trial_id: t.format for t in trials if t.format != "C+M"}
    assert set(failed) == set(expected)
    for tid, fmt in expected.items():
        error = failed[tid].data.tags.get("error", "")
        assert ("TrainingDiverged" in error or "diverged" in error) if fmt == "OnlyC" else "OutOfMemoryError" in error
    table = (spec.resolved_output_dir() / "summary" / "table5.md").read_text()
    assert "OnlyC" in table and "failed" in table.lower() and "diverged" in table.lower()


# ------------------------------------------------------------------------ driver killed mid-grid

SLOW_TRAINER = '''
import time
import sys
sys.path.insert(0, {folder!r})
import toy_trainer_base


def train(request, callbacks):
    time.sleep(1.5)  # long enough for the driver to be killed with trials in flight
    return toy_trainer_base.train(request, callbacks)
'''


@pytest.mark.slow
def test_driver_killed_mid_grid_then_resumed_gives_the_uninterrupted_tables(tmp_path):
    from recon.orchestration.cli.main import main

    studies = {}
    for name in ("straight", "killed"):
        folder = tmp_path / name
        studies[name] = _study(folder, formats="[C+M, OnlyC, OnlyM]", seeds="[42, 43]", trainer="slow.py:train",
                               epochs=2)
        shutil.copy(TOY_TRAINER, folder / "toy_trainer_base.py")
        (folder / "slow.py").write_text(SLOW_TRAINER.format(folder=str(folder)))

    killed = load_spec(studies["killed"])
    results = killed.resolved_output_dir() / "results"
    proc = _recon("study", "run", str(studies["killed"]))
    try:
        deadline = time.time() + 150
        while time.time() < deadline and len(list(results.glob("*/result.json"))) < 2:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        done_before_kill = len(list(results.glob("*/result.json")))
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; Ray's processes die with it (fate sharing)
    finally:
        _reap(proc)
    assert 2 <= done_before_kill < 6, "the kill should land mid-grid"
    assert main(["study", "resume", str(studies["killed"])]) == 0

    runs = _trial_runs(killed)
    ids = [r.data.tags["trial_id"] for r in runs]
    assert sorted(ids) == sorted(t.trial_id for t in expand(killed))  # every trial exactly once
    assert all(r.info.status == "FINISHED" for r in runs)  # nothing left RUNNING (orphaned)
    tracker = StudyTracker(killed.resolved_tracking_uri(), killed.name, create=False)
    assert len(tracker._search("tags.`recon.role` = 'study'")) == 1

    straight = load_spec(studies["straight"])
    assert main(["study", "run", str(studies["straight"])]) == 0
    assert _cells(killed) == _cells(straight) and len(_cells(killed)) == 4  # header + 3 formats


# ------------------------------------------------------------------------ disk full

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Fill the disk up to the last few KiB; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 16, 1 << 10, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def _leftovers(root: Path) -> list[str]:
    from recon.core.storage import TMP_MARKER

    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if TMP_MARKER in p.name or ".tmp-" in p.name or p.name.endswith(".tmp"))


def test_disk_full_while_writing_a_result_keeps_the_previous_one_and_recovers(small_disk):
    from recon.core.storage import Storage

    store = Storage.from_uri(str(small_disk / "storage"))
    store.write_json("results/t1/result.json", {"test": {"micro_f1": 0.5}})
    filler = _fill(small_disk)
    with pytest.raises(OSError) as info:
        store.write_json("results/t1/result.json", {"test": {"micro_f1": 0.9}, "pad": "x" * 1_000_000})
    assert "No space left on device" in str(info.value) or getattr(info.value, "errno", None) == 28
    assert store.read_json("results/t1/result.json") == {"test": {"micro_f1": 0.5}}  # previous one intact
    assert store.list("results") == ["results/t1/result.json"] and _leftovers(small_disk) == []
    filler.unlink()  # space is back: the same write goes through
    store.write_json("results/t1/result.json", {"test": {"micro_f1": 0.9}})
    assert store.read_json("results/t1/result.json") == {"test": {"micro_f1": 0.9}}


def test_disk_full_while_publishing_a_trial_leaves_it_to_run_again(small_disk, tmp_path):
    """A trial whose outputs do not fit publishes no ``result.json``, so the next start runs it again."""
    from recon.orchestration.study.trainable import publish_result, result_rel
    from recon.orchestration.study.runner import harvest

    path = _study(tmp_path / "study")
    text = path.read_text() + f"storage: {small_disk / 'storage'}\n"
    path.write_text(text)
    spec = load_spec(path)
    trial = expand(spec)[0]
    from recon.orchestration.study.runner import study_storage

    store = study_storage(spec)
    out = tmp_path / "worker-out"
    out.mkdir()
    (out / "predictions.jsonl").write_bytes(b'{"pred": "x"}\n' * 150_000)  # 2.1 MB
    (out / "metrics.json").write_text("{}")
    filler = _fill(small_disk)
    os.truncate(filler, max(0, filler.stat().st_size - 2**20))  # 1 MiB free: the predictions do not fit
    result = {"dev": {"micro_f1": 0.4}, "test": {"micro_f1": 0.5}}
    with pytest.raises(OSError):
        publish_result(store, trial.trial_id, out, result)
    assert not store.exists(result_rel(trial.trial_id)) and _leftovers(small_disk) == []
    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, spec.resolved_output_dir() / "artifacts")
    assert harvest([trial], tracker, store, set()) == 0  # nothing complete: the trial is still to run
    filler.unlink()
    publish_result(store, trial.trial_id, out, result)
    assert harvest([trial], tracker, store, set()) == 1
    assert tracker.finished_trial_ids() == {trial.trial_id}


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(small_disk):
    import torch

    from recon.models.nets.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
    from recon.models.nets.loading import load_encoder
    from tiny_bert import make_tiny_bert_dir

    torch.set_num_threads(1)
    bundle = load_encoder(str(make_tiny_bert_dir(small_disk.parent / "models")))
    target = small_disk / "ckpt"
    save_checkpoint(target, bundle.model, bundle.tokenizer, step=1)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    filler = _fill(small_disk)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(1.0)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(target, bundle.model, bundle.tokenizer, step=2)
    message = str(info.value)
    assert str(target) in message and "previous checkpoint" in message
    assert isinstance(info.value, OSError)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before and _leftovers(small_disk) == []
    assert json.loads((target / "recon.json").read_text())["step"] == 1
    load_checkpoint(target)  # still loads
    filler.unlink()
    save_checkpoint(target, bundle.model, bundle.tokenizer, step=2)
    assert json.loads((target / "recon.json").read_text())["step"] == 2 and _leftovers(small_disk) == []


# ------------------------------------------------------------------------ many trials at once

INSTANT_TRAINER = '''
def train(request, callbacks):
    """Returns at once; its numbers identify the trial, so a metric logged to the wrong run shows."""
    cfg = request.config
    value = round(((cfg.seed - 1000) * 5 + ["C+M", "C+T", "OnlyC", "OnlyM", "OnlyT"].index(cfg.input_format)) / 1000, 6)
    row = {"epoch": 1, "dev_micro_f1": value}
    for cb in callbacks:
        cb.on_epoch_end(1, dict(row))
    return {"dev": {"micro_f1": value, "score": value}, "test": {"micro_f1": value, "score": value},
            "best_epoch": 1, "history": [row]}
'''


@pytest.mark.slow
def test_two_hundred_instant_trials_four_at_a_time_each_logged_once_with_its_metrics(tmp_path):
    from recon.orchestration.cli.main import main

    seeds = list(range(1000, 1040))
    path = _study(tmp_path, formats="[C+M, C+T, OnlyC, OnlyM, OnlyT]", seeds=json.dumps(seeds),
                  trainer="instant.py:train", ray="{cpus_per_trial: 1, num_cpus: 4, max_concurrent_trials: 4}")
    (tmp_path / "instant.py").write_text(INSTANT_TRAINER)
    spec = load_spec(path)
    trials = expand(spec)
    assert len(trials) == 200
    assert main(["study", "run", str(path)]) == 0
    runs = _trial_runs(spec)
    assert len(runs) == 200 and all(r.info.status == "FINISHED" for r in runs)
    by_id = {r.data.tags["trial_id"]: r for r in runs}
    assert set(by_id) == {t.trial_id for t in trials}
    formats = ["C+M", "C+T", "OnlyC", "OnlyM", "OnlyT"]
    for trial in trials:
        run = by_id[trial.trial_id]
        expected = round(((trial.seed - 1000) * 5 + formats.index(trial.format)) / 1000, 6)
        assert run.data.metrics["test_metric"] == pytest.approx(expected), trial.trial_id
        assert run.data.metrics["dev_metric"] == pytest.approx(expected)
        assert run.data.tags["seed"] == str(trial.seed) and run.data.tags["format"] == trial.format
    history = StudyTracker(spec.resolved_tracking_uri(), spec.name, create=False).client.get_metric_history(
        runs[0].info.run_id, "epoch/dev_micro_f1")
    assert [m.step for m in history] == [1]
    log = "\n".join(p.read_text(errors="replace") for p in (spec.resolved_output_dir() / "logs").rglob("*")
                    if p.is_file())
    assert "database is locked" not in log
