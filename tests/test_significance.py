"""Significance of table differences: micro-F1 on resampled examples, bootstrap intervals, table marks.

``demo_study`` runs a demo-shaped study (2 models x C+M / OnlyC / OnlyM x 1% / 10% x 3 seeds) with
the toy bag-of-words trainer on real SemEval, logs every trial to MLflow exactly as the driver does
(``publish_result`` + ``harvest``, without Ray) and writes the summary from MLflow alone; the
name-leak and error-browser tests reuse it.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recon.models.train.metrics import micro_f1
from recon.orchestration.study.trial import Trial
from recon.orchestration.report.significance import (MARK_FORMAT, MARK_MODEL, bootstrap_medians, cell_intervals,
                                              compare_cells, example_counts, f1_from_counts, p_value,
                                              significance_frame, table_marks, Cell)

FIXTURES = Path(__file__).parent / "fixtures" / "studies"
SEMEVAL = Path("/work/shared/datasets/semeval")

DEMO_STUDY = """\
name: toydemo
models:
  - {name: Toy, encoder: toy-bow, compare_to: BERT}
  - {name: Toy+CP, checkpoint: "@pretrain.cp", compare_to: CP}
pretrain:
  cp: {objective: cp, corpus: corpus, steps: 1}
grids:
  - {table: table5, datasets: [semeval], splits: [0.01, 0.1], formats: [C+M, OnlyC, OnlyM]}
seeds: [42, 43, 44]
training: {epochs: 3}
data: {max_eval: 300, split_source: paper}
trainer: demo_trainer.py:train
"""

# The toy trainer, with a "pre-trained" variant: the CP model is less regularised (a real, modest difference).
WRAPPER = """

ALPHA = 1e-4


def train(request, callbacks):
    global ALPHA
    ALPHA = 3e-5 if str(request.config.model).endswith("cp-checkpoint") else 1e-4
    return _toy_train(request, callbacks)
"""


def _corpus(directory: Path, n_test_pairs: int = 40) -> Path:
    """A hand-made built corpus (manifest + one JSON-lines shard) holding some SemEval test pairs."""
    rows = []
    lines = (SEMEVAL / "test.txt").read_text().splitlines()
    for i, line in enumerate(lines[: 20 * n_test_pairs: 20]):
        ex = json.loads(line)
        rows.append({"uid": f"u{i}", "sentence_id": f"s{i}", "tokens": ex["token"], "relation": "P1",
                     "head_id": f"Q{2 * i}", "head_name": " ".join(ex["token"][ex["h"]["pos"][0]:ex["h"]["pos"][1]]),
                     "head_start": ex["h"]["pos"][0], "head_end": ex["h"]["pos"][1], "head_source": "anchor",
                     "tail_id": f"Q{2 * i + 1}", "tail_name": " ".join(ex["token"][ex["t"]["pos"][0]:ex["t"]["pos"][1]]),
                     "tail_start": ex["t"]["pos"][0], "tail_end": ex["t"]["pos"][1], "tail_source": "anchor",
                     "shard": 0})
    shard = directory / "shard-00000"
    shard.mkdir(parents=True)
    (shard / "part-0.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "manifest.json").write_text(json.dumps({"format": "json", "num_shards": 1, "shards": [
        {"id": 0, "files": ["shard-00000/part-0.json"]}]}))
    return directory


def demo_study(root: Path):
    """Run the demo-shaped toy study into ``root``; returns (spec, trials, summary dir)."""
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec
    from recon.orchestration.report.summary import write_summary
    from recon.orchestration.study.tracker import StudyTracker
    from recon.orchestration.study.trainable import publish_result
    from recon.orchestration.study.trainers import TrialRequest, resolve_references, resolve_trainer
    from recon.orchestration.study.runner import harvest, study_storage

    root.mkdir(parents=True, exist_ok=True)
    toy = (FIXTURES / "toy_trainer.py").read_text().replace("def train(", "def _toy_train(")
    (root / "demo_trainer.py").write_text(toy.replace("alpha=1e-4", "alpha=ALPHA") + WRAPPER)
    _corpus(root / "corpus")
    (root / "study.yaml").write_text(DEMO_STUDY + f"output_dir: {root / 'out'}\n")
    spec = load_spec(root / "study.yaml")
    trials = expand(spec)
    trainer = resolve_trainer(spec.trainer, "finetune", spec.source.parent)
    store = study_storage(spec)
    checkpoints = {t.config["model"]: str(root / "cp-checkpoint") for t in trials if t.config["model"].startswith("@")}
    for trial in trials:
        out = root / "work" / trial.trial_id
        request = TrialRequest(trial, out, config=resolve_references(trial, checkpoints, None))
        publish_result(store, trial.trial_id, out, trainer(request, []))
    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, spec.resolved_output_dir() / "artifacts")
    assert harvest(trials, tracker, store, tracker.finished_trial_ids()) == len(trials)
    shutil.rmtree(root / "work")
    summary = write_summary(spec, tracker, trials=trials, log=lambda m: None)
    return spec, trials, summary


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    return demo_study(tmp_path_factory.mktemp("demo-study"))


# ------------------------------------------------------------------ unit tests

def _rows(golds, preds):
    return {str(i): {"gold": g, "pred": p} for i, (g, p) in enumerate(zip(golds, preds))}


def test_counts_give_the_metric_modules_micro_f1_with_the_negative_class():
    rng = np.random.default_rng(0)
    labels = ["Other", "A", "B", "C"]
    golds = list(rng.choice(labels, 300, p=[0.5, 0.2, 0.2, 0.1]))
    preds = list(rng.choice(labels, 300))
    ids = {label: i for i, label in enumerate(labels)}
    counts = example_counts(_rows(golds, preds), [str(i) for i in range(300)], "Other")
    expected = micro_f1([ids[p] for p in preds], [ids[g] for g in golds], negative_id=0)
    assert f1_from_counts(counts.sum(axis=0)) == pytest.approx(expected)
    # On a resample (duplicated examples) the weighted counts equal micro-F1 of the resampled list.
    idx = rng.integers(0, 300, 300)
    weights = np.bincount(idx, minlength=300).astype(float)
    resampled = micro_f1([ids[preds[i]] for i in idx], [ids[golds[i]] for i in idx], negative_id=0)
    assert f1_from_counts(np.tensordot(weights, counts, axes=1)) == pytest.approx(resampled)
    # Not a mean of per-example scores, and the negative class never counts as a hit.
    assert f1_from_counts(counts.sum(axis=0)) != pytest.approx(np.mean([g == p for g, p in zip(golds, preds)]))
    only_negative = example_counts(_rows(["Other"] * 3, ["Other"] * 3), ["0", "1", "2"], "Other")
    assert f1_from_counts(only_negative.sum(axis=0)) == 0.0
    # Without a negative class (accuracy datasets) the same formula is accuracy.
    acc = example_counts(_rows(golds, preds), [str(i) for i in range(300)], None)
    assert f1_from_counts(acc.sum(axis=0)) == pytest.approx(np.mean([g == p for g, p in zip(golds, preds)]))


def _cell(model, fmt, seeds):
    return Cell("semeval", "10%", fmt, model, "micro_f1", {s: f"{model}-{fmt}-{s}" for s in seeds})


def _predictions(accuracies, n=400, seed=0):
    """trial id -> predictions: cell ``k`` gets every seed right on about ``accuracies[k]`` of the examples."""
    rng = np.random.default_rng(seed)
    golds = list(rng.choice(["Other", "A", "B"], n))
    out = {}
    for (model, fmt, seeds), acc in accuracies.items():
        for s in seeds:
            right = rng.random(n) < acc
            out[f"{model}-{fmt}-{s}"] = {str(i): {"gold": g, "pred": g if r else ("A" if g != "A" else "B")}
                                         for i, (g, r) in enumerate(zip(golds, right))}
    return out


def test_bootstrap_separates_a_real_difference_from_noise():
    seeds = (42, 43, 44)
    preds = _predictions({("BERT", "C+M", seeds): 0.55, ("CP", "C+M", seeds): 0.80, ("MTB", "C+M", seeds): 0.56})
    big = compare_cells(_cell("CP", "C+M", seeds), _cell("BERT", "C+M", seeds), preds, comparison="model",
                        fixed="C+M", negative="Other", n_boot=400)
    small = compare_cells(_cell("MTB", "C+M", seeds), _cell("BERT", "C+M", seeds), preds, comparison="model",
                          fixed="C+M", negative="Other", n_boot=400)
    assert big["significant"] and big["p_value"] < 0.01 and big["ci_lo"] > 0
    assert big["ci_lo"] < big["delta"] < big["ci_hi"] and big["n_examples"] == 400
    assert not small["significant"] and small["ci_lo"] < 0 < small["ci_hi"]
    # The delta is the difference of the seed medians the tables print.
    assert big["delta"] == pytest.approx(big["median_a"] - big["median_b"])
    assert big["seed_delta_min"] <= big["delta"] <= big["seed_delta_max"] or big["seed_delta_min"] > 0


def test_p_value_and_resamples_are_reproducible():
    counts = np.zeros((2, 50, 1, 3))
    counts[..., 0] = counts[..., 1] = counts[..., 2] = 1
    a = bootstrap_medians([counts, counts], 50, seed=1)
    b = bootstrap_medians([counts, counts], 50, seed=1)
    assert np.array_equal(a[1], b[1]) and np.allclose(a[0], 1.0)
    assert p_value(0.0, np.zeros(99)) == 1.0
    assert p_value(0.5, np.full(99, 0.5)) == pytest.approx(1 / 100)


def test_every_table_comparison_and_the_marks():
    seeds = (42, 43)
    acc = {("BERT", "C+M", seeds): 0.6, ("BERT", "OnlyC", seeds): 0.3, ("BERT", "OnlyM", seeds): 0.59,
           ("CP", "C+M", seeds): 0.61, ("CP", "OnlyC", seeds): 0.45, ("CP", "OnlyM", seeds): 0.3}
    preds = _predictions(acc, n=500, seed=3)
    trials = [Trial(f"{m}-{f}-{s}", "finetune", ("table5",), "semeval", "10%", f, m, s, {})
              for (m, f, ss) in acc for s in ss]
    sig = significance_frame(trials, preds, n_boot=300)
    # 3 model pairs (one per format) + 2 x 3 format pairs.
    assert len(sig) == 9 and set(sig["comparison"]) == {"model", "format"}
    cm = sig[(sig.comparison == "model") & (sig.fixed == "C+M")].iloc[0]
    assert (cm.model_a, cm.model_b) == ("CP", "BERT") and not cm.significant
    marks = table_marks(sig).set_index(["format", "model"])["mark"]
    assert marks[("C+M", "CP")] == MARK_MODEL              # CP ~ BERT on C+M
    assert marks[("OnlyM", "BERT")] == MARK_FORMAT         # BERT OnlyM ~ BERT C+M
    assert ("OnlyC", "BERT") not in marks.index            # far below C+M: significant, unmarked
    cells = cell_intervals(trials, preds, n_boot=200)
    assert len(cells) == 6 and (cells["ci_lo"] <= cells["median"]).all() and (cells["median"] <= cells["ci_hi"]).all()


# ------------------------------------------------------------------ the demo study, end to end

@pytest.mark.slow
def test_demo_study_tables_carry_significance_marks(demo):
    spec, trials, summary = demo
    sig = pd.read_csv(summary / "significance.csv")
    # 2 settings x (3 formats x 1 model pair + 2 models x 3 format pairs) comparisons.
    assert len(sig) == 2 * (3 + 6)
    assert sig["n_examples"].eq(272).all() and sig["test"].str.contains("bootstrap").all()
    # The bootstrap's point estimates are the tables' medians (recomputed from predictions == MLflow metrics).
    cells = pd.read_csv(summary / "cells.csv")
    row = sig[(sig.comparison == "model") & (sig.setting == "10%") & (sig.fixed == "C+M")].iloc[0]
    median = cells[(cells.setting == "10%") & (cells.format == "C+M") & (cells.model == row.model_b)]["median"].item()
    assert row.median_b == pytest.approx(median)
    md = (summary / "table5.md").read_text()
    assert "not significantly different" in md
    marked = sig[(sig.comparison == "format") & (sig.format_b == "C+M") & ~sig.significant]
    if len(marked):
        assert MARK_FORMAT in md
    csv = pd.read_csv(summary / "table5.csv")
    assert csv.select_dtypes("number").shape[1] == 6  # the CSV stays numeric
    delta = pd.read_csv(summary / "delta_vs_reported.csv")
    assert {"in_seed_range", "in_ci", "ci_lo", "ci_hi"} <= set(delta.columns)
    assert "within recon's min..max over seeds" in (summary / "table5_delta.md").read_text()
    print("\n" + md + "\n" + (summary / "table5_delta.md").read_text())
