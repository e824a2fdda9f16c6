"""Grid expansion of the paper's matrix, trial-id stability, and skipping of finished trials."""
from pathlib import Path

from recon.orchestration.study.plan import expand, summarize
from recon.orchestration.study.spec import load_spec

ROOT = Path(__file__).parent.parent


def test_paper_grid_counts():
    spec = load_spec(ROOT / "studies" / "paper.yaml")
    trials = expand(spec)
    summary = summarize(spec, trials)
    # Table 1: TACRED x {CNN, BERT, MTB} x 5 formats x 5 seeds = 75.
    # Table 5: 4 datasets x 3 splits x 3 formats x {BERT, MTB, CP} x 5 seeds = 540.
    # Table 6: 2 FewRel sets x 4 N-K x 3 formats x 3 models, one trial each = 72.
    assert summary.per_table["table1"]["trials"] == 75
    assert summary.per_table["table5"]["trials"] == 540
    assert summary.per_table["table6"]["trials"] == 72
    # TACRED 100% x {BERT, MTB} x {C+M, OnlyC, OnlyM} x 5 seeds are shared by Tables 1 and 5.
    shared = [t for t in trials if set(t.tables) == {"table1", "table5"}]
    assert len(shared) == 30
    assert len(trials) == 75 + 540 + 72 - 30 == 657
    assert len({t.trial_id for t in trials}) == len(trials)


def test_trial_ids_are_stable_and_depend_only_on_the_result_config(tmp_path):
    base = "name: s\nmodels: [{name: BERT}]\ngrids: [{table: t, datasets: [semeval], splits: [0.1], formats: [C+M]}]\n"
    path = tmp_path / "a.yaml"
    path.write_text(base)
    first = [t.trial_id for t in expand(load_spec(path))]
    assert first == [t.trial_id for t in expand(load_spec(path))]
    # Renaming the study/table/model label or adding a description leaves the ids unchanged ...
    path.write_text(base.replace("name: s", "name: other\ndescription: x").replace("{name: BERT}", "{name: B}")
                    .replace("table: t", "table: u"))
    assert [t.trial_id for t in expand(load_spec(path))] == first
    # ... changing anything that affects the result changes them.
    path.write_text(base + "training: {lr: 5.0e-5}\n")
    assert set(t.trial_id for t in expand(load_spec(path))).isdisjoint(first)
    path.write_text(base + "data: {max_eval: 100}\n")
    assert set(t.trial_id for t in expand(load_spec(path))).isdisjoint(first)


def test_pretrain_stage_config_changes_dependent_trial_ids(tmp_path):
    text = ("name: s\nmodels: [{name: BERT}, {name: CP, checkpoint: '@pretrain.cp'}]\n"
            "pretrain: {cp: {steps: STEPS}}\ngrids: [{datasets: [semeval], splits: [0.01]}]\nseeds: [42]\n")
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("STEPS", "10"))
    a = {t.model: t.trial_id for t in expand(load_spec(path))}
    path.write_text(text.replace("STEPS", "20"))
    b = {t.model: t.trial_id for t in expand(load_spec(path))}
    assert a["BERT"] == b["BERT"] and a["CP"] != b["CP"]


def test_summary_counts_finished_and_remaining_compute():
    spec = load_spec(ROOT / "studies" / "demo.yaml")
    trials = expand(spec)
    assert len(trials) == (3 + 1) * 5  # MiniLM x 3 formats + MiniLM+CP x C+M, x 5 seeds, 10% only
    done = {t.trial_id for t in trials[:7]}
    summary = summarize(spec, trials, done)
    assert summary.finished == 7 and summary.trials == 20
    assert 0 < summary.estimated_hours_remaining < summary.estimated_hours_total


def test_stage_identity_follows_corpus_content_not_its_path(tmp_path):
    """A corpus rebuilt differently at the same path changes the CP trials' ids; a moved copy does not."""
    import shutil

    fixture = ROOT / "tests" / "fixtures" / "pretrain" / "corpus"
    text = ("name: s\nmodels: [{name: CP, checkpoint: '@pretrain.cp'}]\n"
            "pretrain: {cp: {corpus: CORPUS, steps: 10}}\ngrids: [{datasets: [semeval], splits: [0.01]}]\nseeds: [42]\n")

    def ids(corpus: Path) -> list[str]:
        path = tmp_path / "s.yaml"
        path.write_text(text.replace("CORPUS", str(corpus)))
        return [t.trial_id for t in expand(load_spec(path))]

    first = tmp_path / "a" / "corpus"
    shutil.copytree(fixture, first)
    original = ids(first)
    moved = tmp_path / "b" / "corpus"
    shutil.copytree(first, moved)
    assert ids(moved) == original
    shard = next(p for p in sorted(first.rglob("part-*.json")))
    lines = shard.read_text().splitlines()
    shard.write_text("\n".join(lines[:-1]) + "\n")  # the same path, one sentence fewer
    assert set(ids(first)).isdisjoint(original)


def test_runs_logged_under_old_trial_ids_are_reported_not_reused():
    """Ids changed with the configuration tree: a run of the same cell under another id is counted."""
    from types import SimpleNamespace

    from recon.orchestration.study.runner import stale_runs

    trials = expand(load_spec(ROOT / "studies" / "demo.yaml"))[:3]

    def run(t, trial_id):
        tags = {"dataset": t.dataset, "setting": t.setting, "format": t.format, "model": t.model, "seed": str(t.seed)}
        return SimpleNamespace(data=SimpleNamespace(tags={**tags, "trial_id": trial_id}))

    runs = {"old-id-0": run(trials[0], "old-id-0"), trials[1].trial_id: run(trials[1], trials[1].trial_id),
            "old-id-1": run(trials[1], "old-id-1")}
    assert stale_runs(trials, runs) == 1  # trial 0 runs again; trial 1 is finished under its current id
