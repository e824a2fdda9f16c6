"""Name reliance in studies: grids that ask for test views, their figures in MLflow, the reliance table, its
findings sentence and the error browser's flip filter."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recon.orchestration.report.error_browser import browser_data
from recon.orchestration.report.findings import findings_paragraph, reliance_sentences
from recon.orchestration.report.name_reliance import (compare_frame, name_reliance_analysis, reliance_frame,
                                                      view_cells)
from recon.orchestration.study.plan import expand
from recon.orchestration.study.spec import SpecError, load_spec
from recon.orchestration.study.trial import Trial

FIXTURES = Path(__file__).parent / "fixtures" / "studies"
STUDIES = Path(__file__).parent.parent / "studies"
VIEWS = ["swap-type", "swap-unseen", "swap-random", "onlyc"]


def _toy_study(tmp_path: Path, views: str | None) -> Path:
    shutil.copy(FIXTURES / "toy_trainer.py", tmp_path / "toy_trainer.py")
    text = (FIXTURES / "toy_study.yaml").read_text().replace("seeds: [42, 43]", "seeds: [42]")
    if views:
        text = text.replace("formats: [C+M]}", f"formats: [C+M], eval_views: {views}}}")
    path = tmp_path / "study.yaml"
    path.write_text(text + f"output_dir: {tmp_path / 'out'}\n")
    return path


# ------------------------------------------------------------------ spec and plan

def test_bad_view_name_is_located_before_compute():
    with pytest.raises(SpecError) as err:
        load_spec(FIXTURES / "bad_view.yaml")
    msg = str(err.value)
    assert "bad_view.yaml" in msg and "grids.0.eval_views" in msg and "line 8" in msg
    assert "swap-names" in msg and "swap-type" in msg  # the bad name, and the known ones


def test_views_on_a_format_without_names_are_refused_before_compute(tmp_path):
    """OnlyC never shows the names: its drop and flips would be 0 by construction, read as "no reliance"."""
    from recon.models.train.checks import finetune_problems
    from recon.models.train.finetune_config import FinetuneConfig

    path = tmp_path / "views_onlyc.yaml"
    path.write_text((FIXTURES / "bad_view.yaml").read_text().replace("formats: [C+M]", "formats: [C+M, OnlyC]")
                    .replace("swap-type, swap-names", "swap-type"))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert "line 5, field 'grids.0'" in msg and "format OnlyC" in msg and "never sees them" in msg
    path.write_text(path.read_text().replace("C+M, OnlyC", "C+M"))
    assert load_spec(path).grids[0].eval_views == ["swap-type"]  # C+M alone: fine
    problems = finetune_problems(FinetuneConfig(input_format="OnlyC", eval_views=("swap-type",)))
    assert any("--eval-views with --input-format OnlyC" in str(p) for p in problems)
    assert not any("--eval-views" in str(p) for p in finetune_problems(FinetuneConfig(eval_views=("onlyc",))))


def test_views_do_not_change_trial_ids_and_reach_the_trainer_config(tmp_path):
    plain = expand(load_spec(_toy_study(tmp_path, None)))
    viewed = expand(load_spec(_toy_study(tmp_path, "[swap-type, onlyc]")))
    assert [t.trial_id for t in plain] == [t.trial_id for t in viewed]
    assert list(viewed[0].config["eval_views"]) == ["swap-type", "onlyc"] and not plain[0].config["eval_views"]
    assert viewed[0].runner_config().eval_views == ("swap-type", "onlyc")


def test_demo_scores_its_c_m_trials_on_views_with_the_ids_it_had():
    """The shipped demo asks for every view on its C+M trials only; splitting its grid kept every trial id."""
    spec = load_spec(STUDIES / "demo.yaml")
    trials = expand(spec)
    assert len(trials) == 20
    for t in trials:
        assert list(t.config["eval_views"]) == (VIEWS if t.format == "C+M" else [])
    data = spec.model_dump()
    data["grids"] = [{"table": "table5", "datasets": ["semeval"], "splits": [0.1], "formats": ["C+M", "OnlyC", "OnlyM"],
                      "models": ["MiniLM"]},
                     {"table": "table5", "datasets": ["semeval"], "splits": [0.1], "formats": ["C+M"],
                      "models": ["MiniLM+CP"]}]  # the demo's grids before views
    before = type(spec).model_validate(data)
    before._source = spec.source
    assert sorted(t.trial_id for t in expand(before)) == sorted(t.trial_id for t in trials)


def test_two_grids_asking_views_of_one_trial_get_them_all(tmp_path):
    path = _toy_study(tmp_path, "[onlyc]")
    path.write_text(path.read_text().replace(
        "grids:\n", "grids:\n  - {table: other, datasets: [semeval], splits: [0.1], formats: [C+M], "
                    "eval_views: [swap-random]}\n"))
    (trial,) = expand(load_spec(path))
    assert sorted(trial.config["eval_views"]) == ["onlyc", "swap-random"] and set(trial.tables) == {"other", "table5"}


# ------------------------------------------------------------------ MLflow and the report, with a toy study

def test_view_metrics_in_the_trial_run_and_the_report(tmp_path):
    """A toy study whose trainer honours eval_views: each view's figures land in the trial's MLflow run (same
    id), and the summary writes the reliance table and the browser's flips from the logged artifacts."""
    from recon.orchestration.report.summary import write_summary
    from recon.orchestration.study.runner import harvest, study_storage
    from recon.orchestration.study.tracker import StudyTracker
    from recon.orchestration.study.trainable import publish_result
    from recon.orchestration.study.trainers import TrialRequest, resolve_references, resolve_trainer

    spec = load_spec(_toy_study(tmp_path, "[swap-random, onlyc]"))
    (trial,) = expand(spec)
    trainer = resolve_trainer(spec.trainer, "finetune", spec.source.parent)
    out = tmp_path / "worker-out"
    result = trainer(TrialRequest(trial, out, config=resolve_references(trial, {}, None)), [])
    store = study_storage(spec)
    publish_result(store, trial.trial_id, out, result)
    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, spec.resolved_output_dir() / "artifacts")
    assert harvest([trial], tracker, store, tracker.finished_trial_ids()) == 1
    run = tracker.trial_runs()[trial.trial_id]
    metrics = run.data.metrics
    for view in ("swap-random", "onlyc"):
        summary = result["views"][view]
        assert metrics[f"view/{view}/flip_share"] == pytest.approx(summary["flip_share"])
        assert metrics[f"view/{view}/test_micro_f1"] == pytest.approx(summary["test"]["micro_f1"])
        assert metrics[f"view/{view}/drop"] == pytest.approx(result["test"]["micro_f1"] - summary["test"]["micro_f1"])
    assert "view_predictions.jsonl" in {a.path for a in tracker.client.list_artifacts(run.info.run_id)}

    shutil.rmtree(spec.resolved_output_dir() / "results")  # the report reads MLflow's artifacts only
    summary_dir = write_summary(spec, tracker, log=lambda _: None)
    table = pd.read_csv(summary_dir / "name_reliance.csv")
    assert sorted(table["view"]) == ["onlyc", "swap-random"]
    swap = table[table["view"] == "swap-random"].iloc[0]
    assert swap["flip_share"] == pytest.approx(result["views"]["swap-random"]["flip_share"])
    assert swap["on_view"] == pytest.approx(result["views"]["swap-random"]["test"]["micro_f1"])
    assert swap["ci_lo"] <= swap["drop"] <= swap["ci_hi"]
    assert (summary_dir / "name_reliance_semeval.png").is_file()
    page = (summary_dir / "error_browser.html").read_text()
    data = json.loads(page.split('id="data">', 1)[1].split("</script>", 1)[0].replace("<\\/", "</"))
    (group,) = data["groups"]
    assert group["views"] == ["onlyc", "swap-random"]
    assert "\x01" in next(t for t in group["view_text"]["swap-random"] if t)  # the swapped sentence, marked


# ------------------------------------------------------------------ the reliance table from fixture results

def _trial(model, seed, fmt="C+M"):
    return Trial(f"{model}-{fmt}-{seed}", "finetune", ("table5",), "semeval", "10%", fmt, model, seed,
                 {"eval_views": ["swap-type"]})


def _fixture(n=200, wrong=None, seeds=(42, 43, 44)):
    """Original predictions all right but 20 per seed; on the view, ``wrong[model]`` more examples flip to a
    wrong label (the first ones the view changed)."""
    wrong = wrong or {"Base": 60, "Base+CP": 20}
    labels = ["Cause-Effect(e1,e2)", "Other", "Member-Collection(e2,e1)"]
    gold = [labels[i % 2 * 2] for i in range(n)]  # no Other in gold: micro-F1 over every example
    trials, predictions, views = [], {}, {}
    for model, k in wrong.items():
        for s in seeds:
            t = _trial(model, s)
            trials.append(t)
            original = {f"semeval/test.txt:{i}": {"gold": g, "pred": g if i >= 20 else "Other"} for i, g in enumerate(gold)}
            rows = {}
            for i, (src, row) in enumerate(original.items()):
                changed = i % 2 == 0 or i < 20
                flip = changed and 20 <= i < 20 + 2 * k
                pred = "Other" if flip else row["pred"]
                rows[src] = {"source": src, "gold": row["gold"], "pred": pred, "original_pred": row["pred"],
                             "flipped": pred != row["pred"], "changed": changed}
            predictions[t.trial_id] = original
            views[t.trial_id] = {"swap-type": rows}
    return trials, predictions, views


def test_reliance_table_drops_intervals_and_flips():
    trials, predictions, views = _fixture()
    cells = view_cells(trials, predictions, views)
    table = reliance_frame(cells, n_boot=400).set_index("model")
    n, base, cp = 200, table.loc["Base"], table.loc["Base+CP"]
    # micro-F1 without Other: original 180 right of 180 predicted / 200 gold; Base loses 60 more to Other
    assert base["original"] == pytest.approx(2 * 180 / (180 + 200))
    assert base["on_view"] == pytest.approx(2 * 120 / (120 + 200))
    assert base["drop"] == pytest.approx(base["original"] - base["on_view"])
    assert base["ci_lo"] < base["drop"] < base["ci_hi"] and base["ci_lo"] > 0  # a real drop, interval above 0
    assert base["flip_share"] == pytest.approx(60 / n) and cp["flip_share"] == pytest.approx(20 / n)
    assert base["n_changed"] == 110 and base["flip_share_changed"] == pytest.approx(60 / 110)
    assert base["flip_ci_lo"] < base["flip_share_changed"] < base["flip_ci_hi"]
    assert base["seed_drop_min"] == pytest.approx(base["drop"]) and base["n_seeds"] == 3
    compare = compare_frame(cells, {"Base": "BERT", "Base+CP": "CP"}, n_boot=400).iloc[0]
    assert compare["model"] == "Base+CP" and compare["base"] == "Base"
    assert compare["diff"] == pytest.approx(cp["drop"] - base["drop"]) and compare["ci_hi"] < 0


def test_findings_say_whether_cp_reduced_name_reliance(tmp_path):
    trials, predictions, views = _fixture()
    name_reliance_analysis(trials, predictions, views, tmp_path, compare_to={"Base": "BERT", "Base+CP": "CP"},
                           n_boot=300, log=lambda _: None)
    (sentence,) = reliance_sentences(tmp_path)
    assert "Base+CP's predictions flip on 18% of swapped examples against Base's 55%" in sentence
    assert "reduced name reliance" in sentence and "other views" not in sentence
    compare = pd.read_csv(tmp_path / "name_reliance_compare.csv")
    extra = compare.iloc[[0]].assign(view="swap-random", diff=0.05, ci_lo=0.01, ci_hi=0.09)
    pd.concat([compare, extra]).to_csv(tmp_path / "name_reliance_compare.csv", index=False)
    (sentence,) = reliance_sentences(tmp_path)  # leads with swap-type, and names every other view's interval
    assert sentence.startswith("Name reliance, SemEval 10% C+M, swap-type:")
    assert sentence.endswith("the other views' differences in drop: swap-random +5.0 [+1.0, +9.0] (more reliance).")
    assert "Name reliance" in findings_paragraph(tmp_path) or not (tmp_path / "cells.csv").is_file()
    trials, predictions, views = _fixture(wrong={"Base": 30, "Base+CP": 30})
    name_reliance_analysis(trials, predictions, views, tmp_path, compare_to={"Base": "BERT", "Base+CP": "CP"},
                           n_boot=300, log=lambda _: None)
    (sentence,) = reliance_sentences(tmp_path)
    assert "difference in drop +0.0" in sentence and "no reduction of name reliance is shown" in sentence


def test_browser_data_carries_view_predictions_and_swapped_sentences():
    trials, predictions, views = _fixture(n=40, wrong={"Base": 5, "Base+CP": 2})
    for rows in views.values():
        for src, row in rows["swap-type"].items():
            if row["changed"]:
                row.update(tokens=["Ann", "met", "Bob"], head=[0, 1], tail=[2, 3])
    data = browser_data("s", trials, predictions, views=views)
    (group,) = data["groups"]
    assert group["views"] == ["swap-type"]
    assert group["view_text"]["swap-type"][0] == "\x01Ann\x02 met \x03Bob\x04" and group["view_text"]["swap-type"][21] == ""
    base = next(s for s in group["systems"] if s["model"] == "Base")
    labels = data["labels"]
    flipped = [i for i in range(40) if any(labels[v[i]] != labels[p[i]] for v, p in zip(base["view_preds"]["swap-type"],
                                                                                     base["preds"]))]
    assert flipped == [20, 22, 24, 26, 28]


def test_plan_says_which_finished_trials_lack_views_and_what_they_cost(tmp_path, capsys):
    """A trial finished without views (so without kept weights: its grid asked for none); its grid now asks for
    one: same id, so it stays finished, and the plan says its view cannot be scored on kept weights and prices
    training it again (tests/test_kept_weights.py: a trial that kept them)."""
    from recon.orchestration.cli.main import main
    from recon.orchestration.study.runner import harvest, study_storage
    from recon.orchestration.study.tracker import StudyTracker
    from recon.orchestration.study.trainable import publish_result
    from recon.orchestration.study.trainers import TrialRequest, resolve_references, resolve_trainer

    path = _toy_study(tmp_path, None)
    spec = load_spec(path)
    (trial,) = expand(spec)
    trainer = resolve_trainer(spec.trainer, "finetune", spec.source.parent)
    out = tmp_path / "worker-out"
    publish_result(study_storage(spec), trial.trial_id, out,
                   trainer(TrialRequest(trial, out, config=resolve_references(trial, {}, None)), []))
    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, spec.resolved_output_dir() / "artifacts")
    assert harvest([trial], tracker, study_storage(spec), set()) == 1

    assert main(["study", "plan", str(path), "--json"]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["views_lacking"] == {}
    _toy_study(tmp_path, "[swap-type, onlyc]")  # the same study, now asking for two views
    assert main(["study", "plan", str(path), "--json"]) in (0, 1)
    plan = json.loads(capsys.readouterr().out)
    assert plan["finished"] == 1
    lack = plan["views_lacking"]
    assert lack["trials"] == 1 and lack["views"] == ["onlyc", "swap-type"] and lack["retrain_hours"] > 0
    assert "keep no weights" in lack["note"] and "training the trials again" in lack["note"]
    assert lack["from_weights"]["trials"] == 0 and lack["retrain"]["trial_ids"] == [trial.trial_id]
    assert main(["study", "plan", str(path)]) in (0, 1)
    assert "test views not scored: 1 finished trials lack onlyc, swap-type" in capsys.readouterr().out


def test_findings_cpu_scores_its_c_m_trials_on_views_with_the_ids_it_had():
    spec = load_spec(STUDIES / "findings-cpu.yaml")
    trials = expand(spec)
    assert len(trials) == 60
    assert {t.format for t in trials if t.config["eval_views"]} == {"C+M"}
    assert sum(bool(t.config["eval_views"]) for t in trials) == 20
    data = spec.model_dump()
    data["grids"] = [{"table": "table5", "datasets": ["semeval"], "splits": [0.01, 0.1],
                      "formats": ["C+M", "OnlyC", "OnlyM"]}]  # its grid before views
    before = type(spec).model_validate(data)
    before._source = spec.source
    assert sorted(t.trial_id for t in expand(before)) == sorted(t.trial_id for t in trials)
