"""Kept weights: a view added to a finished study is scored on the trials' stored weights, never by training.

The model-level tests train a tiny BERT on the keyword fixture (seconds); the study test runs the toy study on
Ray twice (the toy trainer keeps its classifier and honours the evaluation-only contract) and counts trainings
and evaluations by the markers the toy writes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from recon.core.errors import ReconError
from recon.models.train.finetune import evaluate_kept, run_finetune
from recon.models.train.weights import WEIGHTS_FILE
from recon.orchestration.study.plan import expand
from recon.orchestration.study.spec import load_spec

from test_trial_reuse import _tiny_bert, cfg_for

FIXTURES = Path(__file__).parent / "fixtures" / "studies"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    return _tiny_bert(tmp_path_factory.mktemp("encoder") / "a", 0)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_kept_weights_reproduce_predictions_and_views_without_training(encoder, tmp_path):
    """Views scored later from the kept weights equal the views scored right after training, and the original
    test predicted again from them equals the stored predictions.jsonl."""
    torch.set_num_threads(1)
    cfg = cfg_for(encoder, seed=5)
    trained = run_finetune(cfg.replace(keep_weights=True), out_dir=tmp_path / "kept")
    weights = tmp_path / "kept" / WEIGHTS_FILE
    assert trained["weights"] == {"file": WEIGHTS_FILE, "bytes": weights.stat().st_size,
                                  "tensors": trained["weights"]["tensors"]}
    assert json.loads((tmp_path / "kept" / "metrics.json").read_text())["weights"]["bytes"] > 0
    with_views = run_finetune(cfg.replace(eval_views=("onlyc", "swap-random")), out_dir=tmp_path / "views")
    assert not (tmp_path / "views" / WEIGHTS_FILE).exists()  # not kept unless asked
    assert with_views["test"] == trained["test"]  # keep_weights changes nothing about training

    stored = _rows(tmp_path / "kept" / "predictions.jsonl")
    later = evaluate_kept(cfg.replace(eval_views=("onlyc", "swap-random")), weights, stored)
    assert later["predictions_checked"] == len(stored) == trained["n_test"]
    assert [{"source": r["source"], "pred": r["pred"]} for r in stored] == later["predictions"]
    assert later["test"] == trained["test"]
    for view in ("onlyc", "swap-random"):
        for key in ("test", "flip_share", "flip_share_changed", "n", "n_changed", "identity"):
            assert later["views"][view][key] == with_views["views"][view][key], (view, key)
    assert later["view_predictions"] == _rows(tmp_path / "views" / "view_predictions.jsonl")


def test_the_cnn_baseline_keeps_and_reloads_its_weights_too(encoder, tmp_path):
    """The CNN is rebuilt from its config (vocabularies fitted on train again) and reproduces its predictions."""
    from recon.models.train.finetune_config import CnnTraining

    cfg = cfg_for(encoder, seed=7).replace(model="cnn", cnn=CnnTraining(epochs=3), keep_weights=True)
    trained = run_finetune(cfg, out_dir=tmp_path)
    stored = _rows(tmp_path / "predictions.jsonl")
    later = evaluate_kept(cfg.replace(eval_views=("onlyc",)), tmp_path / WEIGHTS_FILE, stored)
    assert later["predictions_checked"] == trained["n_test"] and later["test"] == trained["test"]
    assert "error" not in later["views"]["onlyc"] and later["views"]["onlyc"]["n"] == trained["n_test"]


def test_weights_that_do_not_reproduce_the_stored_predictions_are_refused(encoder, tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = cfg_for(encoder, seed=6).replace(keep_weights=True)
    run_finetune(cfg, out_dir=tmp_path)
    from recon.models.train.finetune_data import load_splits

    state = load_file(tmp_path / WEIGHTS_FILE)
    stored = _rows(tmp_path / "predictions.jsonl")
    labels = load_splits(cfg)[0].label2id()
    (bias,) = [k for k in state if k.endswith("bias") and state[k].shape == (len(labels),)]  # the classifier's
    rarest = min(labels, key=lambda label: sum(r["pred"] == label for r in stored))
    state[bias] = torch.full_like(state[bias], -1e4)
    state[bias][labels[rarest]] = 1e4  # one label whatever the input: not what the trained model predicted
    save_file(state, tmp_path / "other.safetensors")
    with pytest.raises(ReconError, match="do not reproduce the trial's test predictions"):
        evaluate_kept(cfg.replace(eval_views=("onlyc",)), tmp_path / "other.safetensors", stored)


def test_grids_keep_weights_where_they_ask_for_views_unless_told(tmp_path):
    shutil.copy(FIXTURES / "toy_trainer.py", tmp_path / "toy_trainer.py")
    base = (FIXTURES / "toy_study.yaml").read_text().replace("seeds: [42, 43]", "seeds: [42]")

    def trials(grid_extra: str = "", study_extra: str = ""):
        path = tmp_path / "study.yaml"
        path.write_text(base.replace("formats: [C+M]}", f"formats: [C+M]{grid_extra}}}") + study_extra)
        return expand(load_spec(path))

    (plain,) = trials()
    (viewed,) = trials(", eval_views: [onlyc]")
    (off,) = trials(", eval_views: [onlyc], keep_weights: false")
    (study_on,) = trials(study_extra="keep_weights: true\n")
    (grid_wins,) = trials(", keep_weights: false", "keep_weights: true\n")
    assert [t.config["keep_weights"] for t in (plain, viewed, off, study_on, grid_wins)] == [False, True, False, True,
                                                                                           False]
    assert len({t.trial_id for t in (plain, viewed, off, study_on, grid_wins)}) == 1  # outside the trial id


def _study(tmp_path: Path, views: str | None) -> Path:
    """Two trials of one grid (C+M at 10%, two seeds) that keep their weights, and one C+M trial at 1% of another
    grid that does not (no views asked at first, so the default keeps nothing)."""
    shutil.copy(FIXTURES / "toy_trainer.py", tmp_path / "toy_trainer.py")
    extra = f", eval_views: {views}" if views else ""
    text = (FIXTURES / "toy_study.yaml").read_text().replace(
        "formats: [C+M]}", f"formats: [C+M], keep_weights: true{extra}}}\n"
                           f"  - {{table: later, datasets: [semeval], splits: [0.01], formats: [C+M], seeds: [42]{extra}}}")
    path = tmp_path / "study.yaml"
    path.write_text(text + f"output_dir: {tmp_path / 'out'}\n")
    return path


def _markers(folder: Path, kind: str) -> list[str]:
    return sorted(p.name.split("-")[1] for p in folder.iterdir() if p.name.startswith(kind + "-"))


def test_a_view_added_to_a_finished_study_is_scored_from_kept_weights(tmp_path, capsys, monkeypatch):
    """Run once without views; the grids then ask for onlyc: `recon study run` trains nothing again, the two
    trials that kept weights get view/onlyc figures in their same MLflow runs (and storage), the one that kept
    none is left as it was and the plan says it needs training again."""
    from recon.orchestration.cli.main import main
    from recon.orchestration.study.tracker import StudyTracker

    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("RECON_TOY_MARKERS", str(markers))
    path = _study(tmp_path, None)
    spec = load_spec(path)
    trials = expand(spec)
    kept = {t.trial_id for t in trials if t.setting == "10%"}
    (unkept,) = {t.trial_id for t in trials} - kept
    assert main(["study", "run", str(path)]) == 0
    assert "3 run now, 0 failed; 3 in MLflow" in capsys.readouterr().out
    assert _markers(markers, "train") == sorted(t.trial_id for t in trials) and not _markers(markers, "eval")
    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, create=False)
    before = {tid: run.info.run_id for tid, run in tracker.trial_runs().items()}
    results = spec.resolved_output_dir() / "results"
    for tid in kept:  # kept in storage, never in MLflow's artifacts
        assert (results / tid / "weights.pkl").is_file()
        assert "weights.pkl" not in {a.path for a in tracker.client.list_artifacts(before[tid])}
    assert not (results / unkept / "weights.pkl").exists()

    _study(tmp_path, "[onlyc]")  # the same study, both grids now asking for a view
    assert main(["study", "plan", str(path), "--json"]) in (0, 1)
    lack = json.loads(capsys.readouterr().out)["views_lacking"]
    assert lack["from_weights"] == {"trials": 2, "views": ["onlyc"], "trial_ids": sorted(kept)}
    assert lack["retrain"] == {"trials": 1, "views": ["onlyc"], "trial_ids": [unkept]} and lack["retrain_hours"] > 0
    assert main(["study", "plan", str(path)]) in (0, 1)
    text = capsys.readouterr().out
    assert "from kept weights (no training): 2 trials, onlyc" in text
    assert "need training again (no weights kept): 1 trials, onlyc" in text

    assert main(["study", "run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 run now" in out and "2 given new views from kept weights" in out
    assert "1 lack views and kept no weights" in out
    assert _markers(markers, "train") == sorted(t.trial_id for t in trials)  # nothing trained again
    assert _markers(markers, "eval") == sorted(kept)  # one evaluation per kept trial
    runs = tracker._search("tags.`recon.role` = 'trial'")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(before)  # no second run for any trial
    after = tracker.trial_runs()
    assert {tid: run.info.run_id for tid, run in after.items()} == before
    for tid in kept:
        run, stored = after[tid], json.loads((results / tid / "result.json").read_text())
        view = stored["views"]["onlyc"]
        assert run.data.metrics["view/onlyc/flip_share"] == pytest.approx(view["flip_share"])
        assert run.data.metrics["view/onlyc/test_micro_f1"] == pytest.approx(view["test"]["micro_f1"])
        assert run.data.metrics["view/onlyc/drop"] == pytest.approx(stored["test"]["micro_f1"]
                                                                    - view["test"]["micro_f1"])
        assert stored["views_from_weights"]["onlyc"]["predictions_checked"] == stored["test"]["n"]
        assert run.data.tags["recon.views_from_weights"] == "onlyc"
        rows = _rows(results / tid / "view_predictions.jsonl")
        assert {r["view"] for r in rows} == {"onlyc"} and len(rows) == stored["test"]["n"]
        logged = tracker.download(run.info.run_id, "view_predictions.jsonl", tmp_path / "dl" / tid)
        assert logged is not None and _rows(logged) == rows
    assert not any(k.startswith("view/") for k in after[unkept].data.metrics)

    assert main(["study", "run", str(path)]) == 0  # a third run: nothing left to score
    assert _markers(markers, "eval") == sorted(kept)
    assert "given new views" not in capsys.readouterr().out

    # One more view; one trial's kept weights are damaged: the other gets it merged beside onlyc, the damaged
    # one fails without a half-written result, and the run says so (exit 1); still nothing trains.
    good, bad = sorted(kept)
    (results / bad / "weights.pkl").write_bytes(b"not a pickle")
    bad_result = (results / bad / "result.json").read_text()
    onlyc_rows = _rows(results / good / "view_predictions.jsonl")
    _study(tmp_path, "[onlyc, swap-random]")
    assert main(["study", "run", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 given new views from kept weights" in out and "1 could not be scored from kept weights" in out
    assert f"trial {bad}: views swap-random not scored from its kept weights" in out
    assert _markers(markers, "train") == sorted(t.trial_id for t in trials)
    assert (results / bad / "result.json").read_text() == bad_result
    final = tracker.trial_runs()
    assert "view/swap-random/flip_share" not in final[bad].data.metrics
    assert "view/swap-random/flip_share" in final[good].data.metrics
    assert final[good].data.tags["recon.views_from_weights"] == "onlyc,swap-random"
    rows = _rows(results / good / "view_predictions.jsonl")
    assert [r for r in rows if r["view"] == "onlyc"] == onlyc_rows and {r["view"] for r in rows} == {"onlyc",
                                                                                                   "swap-random"}
