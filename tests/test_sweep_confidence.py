"""How sure a sweep is: objectives with their uncertainty, the best report on constructed objectives (clearly
separated, overlapping, mixed, stopped trials), the plan's detectable difference (formula checked by
simulation), the probes' dev predictions from run_finetune, and the report through storage, MLflow, the
trials table, the plots and `recon sweep best`."""
from __future__ import annotations

import json
import math
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from recon.orchestration.sweep.confidence import (Entry, ProbeScores, entries_from, holm, judge,  # noqa: E402
                                                  load_probe_scores, probe_uncertainty, verdict_lines)
from recon.orchestration.sweep.power import detectable_difference, paired_detectable, z_sum  # noqa: E402
from recon.orchestration.sweep.spec import load_sweep, plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "sweep"
LABELS = ["A(e1,e2)", "B(e1,e2)", "C(e2,e1)", "Other"]


def gold_labels(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [LABELS[i] for i in rng.integers(0, len(LABELS), size=n)]


def predictions(gold: list[str], right: np.ndarray) -> dict[str, dict]:
    """source -> row: the gold label where ``right``, else the next label (a wrong relation or a wrong Other)."""
    return {f"dev.txt:{i}": {"source": f"dev.txt:{i}", "gold": g,
                             "pred": g if ok else LABELS[(LABELS.index(g) + 1) % len(LABELS)]}
            for i, (g, ok) in enumerate(zip(gold, right))}


def scores_of(gold: list[str], rights: list[np.ndarray], step: int = 8, metric: str = "micro_f1") -> ProbeScores:
    return ProbeScores(step, metric, None if metric == "accuracy" else "Other", list(range(42, 42 + len(rights))),
                       [predictions(gold, r) for r in rights])


def entry(number: int, gold: list[str], rights: list[np.ndarray], state: str = "completed", step: int = 8,
          more: dict[int, list[np.ndarray]] | None = None) -> Entry:
    probes = {step: scores_of(gold, rights, step)}
    for s, r in (more or {}).items():
        probes[s] = scores_of(gold, r, s)
    cell = probes[step]
    interval = probe_uncertainty(cell)
    return Entry(number, f"p_blank={number / 10:.1f}", state, interval["objective"], step, probes, interval)


def correct(n: int, rate: float, seed: int, base: np.ndarray | None = None, flip: float = 0.0) -> np.ndarray:
    """Per-example correctness at ``rate``; with ``base``, a copy of it with a share ``flip`` redrawn (paired)."""
    rng = np.random.default_rng(seed)
    if base is None:
        return rng.random(n) < rate
    redraw = rng.random(n) < flip
    return np.where(redraw, rng.random(n) < rate, base)


# ---------------------------------------------------------------- the best report on constructed objectives

def test_clearly_separated_trials_give_one_winner():
    gold = gold_labels(400)
    entries = {0: entry(0, gold, [correct(400, 0.85, 1)]), 1: entry(1, gold, [correct(400, 0.45, 2)]),
               2: entry(2, gold, [correct(400, 0.30, 3)])}
    verdict = judge(entries, best=0)
    assert verdict.winner and verdict.tied == [0] and verdict.runner_up == 1
    runner = verdict.of(1)
    assert runner.distinguishable and runner.delta > 0.2 and runner.ci_lo > 0 and runner.p_adjusted < 0.01
    assert runner.n_examples == 400
    text = "\n".join(verdict_lines(verdict, entries, "dev micro_f1"))
    assert "vs the runner-up, trial 1: delta +" in text and ": distinguishable" in text
    assert "distinguishable from trial 2" in text and "a winner, not noise" in text
    assert "cannot be told apart" not in text and "this dev set detects paired differences of about" in text


def test_overlapping_trials_are_printed_as_a_set_not_a_winner():
    gold = gold_labels(120, seed=4)
    base = correct(120, 0.5, 5)
    entries = {n: entry(n, gold, [correct(120, 0.5, 10 + n, base=base, flip=0.3)]) for n in range(4)}
    best = max(entries, key=lambda n: entries[n].objective)
    verdict = judge(entries, best=best)
    assert not verdict.winner and sorted(verdict.tied) == [0, 1, 2, 3] and verdict.tied[0] == best
    assert all(not c.distinguishable and c.ci_lo < 0 < c.ci_hi for c in verdict.comparisons)
    assert all(c.p_adjusted >= c.p for c in verdict.comparisons)
    text = "\n".join(verdict_lines(verdict, entries, "dev micro_f1"))
    assert "NOT distinguishable" in text and "no single winner: 4 settings cannot be told apart" in text
    for n in range(4):
        assert f"trial {n}: p_blank=0.{n}" in text
    assert "a winner, not noise" not in text
    # how many examples the widest gap in the set would need: n x (detectable / gap)^2, detectable from the
    # bootstrap's spread of the paired differences
    gap = max(abs(c.delta) for c in verdict.comparisons)
    assert verdict.detectable == pytest.approx(z_sum() * float(np.median([c.se_delta for c in verdict.comparisons])))
    need = math.ceil(120 * (verdict.detectable / gap) ** 2)
    assert need > 120 and f"({gap:.3f}) would need about {need:,} dev examples to be detected" in text


def test_a_close_runner_up_ties_while_a_failing_setting_is_told_apart():
    gold = gold_labels(300, seed=7)
    best = correct(300, 0.7, 8)
    entries = {0: entry(0, gold, [best]), 1: entry(1, gold, [correct(300, 0.7, 9, base=best, flip=0.1)]),
               2: entry(2, gold, [correct(300, 0.2, 10)])}
    top = max(entries, key=lambda n: entries[n].objective)
    other = 1 - top
    verdict = judge(entries, best=top)
    assert sorted(verdict.tied) == [0, 1] and verdict.runner_up == other and not verdict.winner
    assert verdict.of(2).distinguishable and not verdict.of(other).distinguishable
    text = "\n".join(verdict_lines(verdict, entries, "dev micro_f1"))
    assert "distinguishable from trial 2" in text and "2 settings cannot be told apart" in text


def test_a_stopped_trial_is_compared_with_the_best_where_it_stopped():
    gold = gold_labels(300, seed=11)
    early_best = correct(300, 0.5, 12)
    entries = {0: entry(0, gold, [correct(300, 0.8, 13)], more={4: [early_best]}),
               1: entry(1, gold, [correct(300, 0.5, 14, base=early_best, flip=0.2)], state="stopped_early", step=4),
               2: entry(2, gold, [correct(300, 0.1, 15)], state="stopped_early", step=4),
               3: Entry(3, "p_blank=0.3", "stopped_early", 0.4, 4, {}, None, "no per-example predictions")}
    verdict = judge(entries, best=0)
    assert {c.number: c.step for c in verdict.comparisons} == {1: 4, 2: 4}
    assert verdict.unjudged == {3: "no per-example predictions"}
    assert verdict.tied == [0, 1] and verdict.of(2).distinguishable
    text = "\n".join(verdict_lines(verdict, entries, "dev micro_f1"))
    assert "(stopped at step 4, compared there)" in text
    assert "not compared: trial 3 (no per-example predictions)" in text
    assert "at step 4 (stopped early)" in text


def test_only_one_trial_says_nothing_was_compared():
    gold = gold_labels(50)
    entries = {0: entry(0, gold, [correct(50, 0.5, 1)])}
    verdict = judge(entries, best=0)
    assert not verdict.winner and verdict.comparisons == []
    assert "nothing says it is better than the alternatives" in verdict_lines(verdict, entries, "dev score")[0]


def test_holm_is_step_down_monotone_and_capped():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


# ---------------------------------------------------------------- one objective's uncertainty

def test_interval_matches_the_binomial_error_and_reports_the_seed_spread():
    gold = gold_labels(500, seed=3)
    one = scores_of(gold, [correct(500, 0.6, 4)], metric="accuracy")
    u = probe_uncertainty(one, n_boot=2000)
    p = u["objective"]
    assert u["se"] == pytest.approx(math.sqrt(p * (1 - p) / 500), rel=0.15)
    assert u["ci_lo"] < p < u["ci_hi"] and u["ci_hi"] - u["ci_lo"] == pytest.approx(2 * 1.96 * u["se"], rel=0.2)
    assert (u["n_examples"], u["n_seeds"], u["seed_sd"]) == (500, 1, 0.0)
    three = scores_of(gold, [correct(500, r, 5 + i) for i, r in enumerate((0.5, 0.6, 0.7))], metric="accuracy")
    v = probe_uncertainty(three)
    assert v["n_seeds"] == 3 and v["seed_min"] < v["objective"] < v["seed_max"] and v["seed_sd"] > 0.05
    assert v["seed_max"] - v["seed_min"] == pytest.approx(0.2, abs=0.08)


def _write_probe(store, sweep: str, tid: str, step: int, seed: int, rows: dict, score: float) -> None:
    from recon.orchestration.sweep.trial import probe_predictions_rel, probe_rel

    store.write_text(probe_predictions_rel(sweep, tid, step, seed, "dev"),
                     "".join(json.dumps(r) + "\n" for r in rows.values()))
    store.write_json(probe_rel(sweep, tid, step, seed), {"seed": seed, "score": score, "metric": "micro_f1",
                                                          "negative_label": "Other", "step": step})


def _micro(rows: dict) -> float:
    c = sum(r["pred"] == r["gold"] != "Other" for r in rows.values())
    return 2 * c / (sum(r["pred"] != "Other" for r in rows.values()) + sum(r["gold"] != "Other" for r in rows.values()))


def test_stored_predictions_must_reproduce_the_stored_score(tmp_path):
    from recon.core.storage import Storage

    store = Storage.from_uri(str(tmp_path))
    rows = predictions(gold_labels(80), correct(80, 0.5, 1))
    _write_probe(store, "s", "t", 4, 42, rows, _micro(rows))
    row = store.read_json("sweeps/s/trials/t/probes/step_000004/seed_42.json")
    scores, why = load_probe_scores(store, "s", "t", 4, [row], "score", "dev")
    assert why is None and scores.metric == "micro_f1" and scores.negative == "Other" and len(scores.sources()) == 80
    scores, why = load_probe_scores(store, "s", "t", 4, [{**row, "score": row["score"] + 0.01}], "score", "dev")
    assert scores is None and "not the scored predictions" in why
    scores, why = load_probe_scores(store, "s", "t", 4, [{**row, "seed": 43}], "score", "dev")
    assert scores is None and "no per-example predictions" in why
    scores, why = load_probe_scores(store, "s", "t", 4, [row], "precision", "dev")
    assert scores is None and "not a function of per-example counts" in why


# ---------------------------------------------------------------- the plan's detectable difference

def test_detectable_difference_formula_and_its_power_by_simulation():
    d = detectable_difference(60, 1, 0.22)
    assert d["delta"] == pytest.approx((1.959964 + 0.841621) * math.sqrt(2 * 0.22 * 0.78 / 60), rel=1e-5)
    assert detectable_difference(60, 1)["expected_score"] == 0.5 and detectable_difference(None) is None
    assert detectable_difference(240, 4, 0.22)["delta"] == pytest.approx(d["delta"] / 2)
    assert detectable_difference(60, 4, 0.22)["delta_independent_seeds"] == pytest.approx(d["delta"] / 2)
    assert paired_detectable(0.01) == pytest.approx(z_sum() * 0.01)
    # the figure is what it claims: two independent scores on n examples that differ by it are told apart
    # (two-sided 5%) about 80% of the time
    n, p = 400, 0.3
    delta = detectable_difference(n, 1, p)["delta"]
    rng = np.random.default_rng(0)
    a = rng.binomial(n, p, size=20000) / n
    b = rng.binomial(n, p + delta, size=20000) / n
    pooled = (a + b) / 2
    rejected = np.abs(b - a) / np.sqrt(2 * pooled * (1 - pooled) / n) > 1.959964
    assert rejected.mean() == pytest.approx(0.8, abs=0.03)


def test_plan_states_the_detectable_difference_before_anything_runs(capsys):
    from recon.orchestration.cli.main import main

    demo = load_sweep(ROOT / "studies" / "sweep-demo.yaml")
    info = plan(demo)
    n = min(1493, demo.finetune.data.max_eval)  # SemEval's dev size (paper Table 8), capped
    assert info["probe"]["scored_examples"] == n and info["detectable"]["n_examples"] == n
    assert info["detectable"]["expected_score"] == demo.objective.expected_score
    assert main(["sweep", "plan", str(ROOT / "studies" / "sweep-demo.yaml")]) == 0
    out = capsys.readouterr().out
    delta = info["detectable"]["delta"]
    assert f"smallest difference this sweep can detect: {delta:.3f} in dev score ({n} examples" in out
    assert out.index("smallest difference") < out.index("estimated compute")
    paper = plan(load_sweep(ROOT / "studies" / "sweep-paper.yaml"))["detectable"]
    assert paper["n_examples"] == 22631 and paper["seeds"] == 3 and paper["delta"] < 0.02


def test_expected_score_changes_no_trial_id(tmp_path):
    base = (FIXTURES / "base.yaml").read_text()
    path = tmp_path / "s.yaml"
    path.write_text(base + "objective: {expected_score: 0.3}\n")
    params = {"pretrain.p_blank": 0.3, "pretrain.batch_size": 8}
    assert load_sweep(path).trial_id(params) == load_sweep(FIXTURES / "base.yaml").trial_id(params)
    path.write_text(base + "objective: {expected_score: 1.5}\n")
    with pytest.raises(Exception, match="objective.expected_score"):
        load_sweep(path)


# ---------------------------------------------------------------- run_finetune's dev predictions

@pytest.fixture(scope="module")
def keyword_bert(tmp_path_factory) -> str:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    keyword = ROOT / "tests" / "fixtures" / "training" / "keyword"
    out = tmp_path_factory.mktemp("keyword_bert")
    tokenizer = BertTokenizer(str(keyword / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         vocab_size=len(tokenizer), max_position_embeddings=64)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_run_finetune_writes_dev_predictions_only_on_request(keyword_bert, tmp_path):
    from recon.models.train.config import TrainConfig
    from recon.models.train.finetune import run_finetune
    from recon.models.train.finetune_config import DataOptions, FinetuneConfig

    keyword = ROOT / "tests" / "fixtures" / "training" / "keyword"
    cfg = FinetuneConfig(dataset=None, path=str(keyword), kind="opennre", encoder=keyword_bert,
                         data=DataOptions(max_length=32),
                         training=TrainConfig(epochs=3, batch_size=16, lr=3e-3, seed=4, warmup_ratio=0.0))
    plain = run_finetune(cfg, out_dir=tmp_path / "plain")
    # dev peaks before the last epoch here, so predictions of the last weights would not reproduce it
    assert plain["best_epoch"] < len(plain["history"])
    assert plain["history"][-1]["dev_micro_f1"] != pytest.approx(plain["dev"]["micro_f1"])
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["metrics.json", "predictions.jsonl"]
    asked = run_finetune(cfg, out_dir=tmp_path / "asked", dev_predictions=True)
    assert asked["dev"] == plain["dev"] and asked["test"] == plain["test"]  # nothing else changes
    test_rows = [(tmp_path / d / "predictions.jsonl").read_text() for d in ("asked", "plain")]
    assert test_rows[0] == test_rows[1]
    rows = [json.loads(line) for line in (tmp_path / "asked" / "dev_predictions.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == [f"keyword/dev.txt:{i}" for i in range(1, 49)]  # the portable identity
    golds = [json.loads(x)["relation"] for x in (keyword / "dev.txt").read_text().splitlines()]
    assert [r["gold"] for r in rows] == golds
    by_source = {r["source"]: r for r in rows}
    assert _micro(by_source) == pytest.approx(asked["dev"]["micro_f1"])  # the best epoch's dev predictions
    assert sum(r["pred"] == r["gold"] for r in rows) / 48 == pytest.approx(asked["dev"]["accuracy"])


# ---------------------------------------------------------------- through storage, MLflow, table, plots, CLI

def _constructed_sweep(tmp_path):
    """A sweep run without Ray: four trials in an Optuna journal, their probes (two seeds each) and predictions
    in storage. Trials 0 and 1 are close, trial 2 fails clearly, trial 3 was stopped at step 2 on noise."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from recon.core.storage import Storage
    from recon.orchestration.sweep.journal import Journal, open_study

    path = tmp_path / "sweep.yaml"
    path.write_text((FIXTURES / "base.yaml").read_text() + f"output_dir: {tmp_path / 'out'}\n"
                    "objective: {seeds: [42, 43]}\n")
    spec = load_sweep(path)
    store = Storage.from_uri(str(tmp_path / "out"))
    study = open_study(spec, Journal(spec, store))
    dists = {p: d.optuna() for p, d in spec.domains.items()}
    gold = gold_labels(200, seed=21)
    good = correct(200, 0.75, 22)
    plan_ = {0: (0.1, 8, [good, good]), 1: (0.4, 16, [good, correct(200, 0.75, 23, base=good, flip=0.15)]),
             2: (0.9, 8, [correct(200, 0.5, 24), correct(200, 0.15, 25)]),
             3: (0.6, 16, [correct(200, 0.75, 26, base=good, flip=0.2)])}
    for n, (p_blank, batch, steps) in plan_.items():
        tid = f"trial{n}"
        scores = []
        for step, right in zip((2, 4), steps):
            per_seed = []
            for seed in (42, 43):  # seed 43 redraws 10% of seed 42's answers
                rows = predictions(gold, right if seed == 42 else correct(200, 0.6, 100 * n + step, right, 0.1))
                per_seed.append(_micro(rows))
                _write_probe(store, spec.name, tid, step, seed, rows, per_seed[-1])
            scores.append(float(np.median(per_seed)))
        done = len(steps) == 2
        study.add_trial(create_trial(params={"pretrain.p_blank": p_blank, "pretrain.batch_size": batch},
                                     distributions=dists, value=scores[-1] if done else None,
                                     intermediate_values={1: scores[0]}, user_attrs={"trial_hash": tid},
                                     state=TrialState.COMPLETE if done else TrialState.PRUNED))
    assert isinstance(study, optuna.Study)
    return spec, path, store, study


def test_the_report_flows_into_the_table_mlflow_plots_and_the_cli(tmp_path, capsys):
    from recon.orchestration.cli.main import main
    from recon.orchestration.sweep.records import all_records, best_trial
    from recon.orchestration.sweep.tracker import SweepTracker, trials_frame, write_artifacts

    spec, path, store, study = _constructed_sweep(tmp_path)
    records = all_records(spec, study, store, lambda: "unused")
    assert all(r["probes"][-1]["uncertainty"]["n_examples"] == 200 for r in records.values())
    best = best_trial(spec, study, records)
    verdict = best["verdict"]
    assert best["number"] in (0, 1) and sorted(verdict.tied) == [0, 1, 3] and verdict.of(2).distinguishable
    assert best["head"].startswith(f"# best of sweep fixture-sweep: trial {best['number']}, dev ")
    assert "95% CI [" in best["head"].splitlines()[0] and "3 settings cannot be told apart" in best["head"]
    assert best["snippet"].startswith(best["head"]) and "pretrain:" in best["snippet"]

    states = {0: "completed", 1: "completed", 2: "completed", 3: "stopped_early"}
    frame = trials_frame(study, states, records, verdict)
    assert list(frame["vs_best"]) == [("best" if n == best["number"] else "worse" if n == 2 else "tied")
                                      for n in range(4)]
    assert (frame["ci_lo"] < frame["objective"]).all() and (frame["objective"] < frame["ci_hi"]).all()
    assert (frame["objective_se"] > 0.01).all() and (frame["n_examples"] == 200).all()
    assert (frame["seed_min"] <= frame["objective"]).all() and (frame["objective"] <= frame["seed_max"]).all()
    assert (frame["seed_max"] > frame["seed_min"]).all()
    written = write_artifacts(study, frame, tmp_path / "art", list(spec.domains), "dev micro-F1", best["snippet"],
                              records)
    names = {p.name for p in written}
    assert {"objective_vs_p_blank.png", "objective_intervals.png", "trials.md"} <= names
    assert all(p.stat().st_size > 5000 for p in written if p.suffix == ".png")
    table = (tmp_path / "art" / "trials.md").read_text()
    assert all(column in table for column in ("objective_se", "ci_lo", "ci_hi", "vs_best", "p_vs_best_holm"))

    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", "fixture-sweep", tmp_path / "artifacts")
    tracker.parent_run_id({})
    for n, record in records.items():
        tracker.log_trial(n, study.trials[n].params, states[n], record)
    tracker.finish(tmp_path / "art", best)
    con = sqlite3.connect(tmp_path / "mlflow.db")
    runs = dict(con.execute("select t.value, r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
                            "where t.key = 'optuna_number'").fetchall())
    keys = {k for (k,) in con.execute("select key from metrics where run_uuid = ?", (runs["2"],))}
    assert {"objective_se", "objective_ci_lo", "objective_ci_hi", "objective_n_examples", "probe_objective_ci_lo",
            "objective_seed_min", "objective_seed_max", "objective_seed_sd", "delta_vs_best", "p_vs_best_holm"} <= keys
    tags = dict(con.execute("select t.value, g.value from tags t join tags g on g.run_uuid = t.run_uuid where "
                            "t.key = 'optuna_number' and g.key = 'vs_best'").fetchall())
    assert tags["2"] == "worse" and tags["3"] == "tied" and tags[str(best["number"])] == "best"
    parent = {k: v for k, v in con.execute("select key, value from metrics where key in ('best_is_winner', "
                                           "'settings_tied_with_best', 'best_objective_ci_lo')")}
    assert parent["best_is_winner"] == 0 and parent["settings_tied_with_best"] == 3

    assert main(["sweep", "best", str(path)]) == 0
    out = capsys.readouterr().out
    assert "no single winner: 3 settings cannot be told apart" in out and "distinguishable from trial 2" in out
    assert "pretrain:" in out
    assert main(["sweep", "best", str(path), "--stage", "mine"]) == 0
    staged = capsys.readouterr().out
    assert "3 settings cannot be told apart" in staged and "  mine:" in staged


def test_entries_skip_trials_without_probes():
    assert entries_from([(0, "x", "failed")], {0: {"probes": []}}) == {}
