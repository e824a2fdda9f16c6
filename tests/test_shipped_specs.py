"""Every shipped study and sweep file loads and plans (so none rots), and says what it runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

STUDIES = Path(__file__).resolve().parents[1] / "studies"
FILES = sorted(STUDIES.glob("*.yaml"))


def _is_sweep(path: Path) -> bool:
    return "space" in (yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def test_every_file_is_found():
    assert {p.name for p in FILES} >= {"demo.yaml", "demo-authors.yaml", "findings-cpu.yaml", "paper.yaml",
                                       "sweep-demo.yaml", "sweep-paper.yaml"}


@pytest.mark.parametrize("path", [p for p in FILES if not _is_sweep(p)], ids=lambda p: p.name)
def test_study_loads_expands_and_plans(path):
    from recon.orchestration.study.plan import expand, summarize, unavailable_trials
    from recon.orchestration.study.spec import load_spec
    from recon.orchestration.study.stages import study_data_dir

    spec = load_spec(path)
    trials = expand(spec)
    assert trials and len({t.trial_id for t in trials}) == len(trials)
    summary = summarize(spec, trials, missing=unavailable_trials(spec, trials, study_data_dir(spec)))
    assert summary.trials == len(trials) and summary.estimated_hours_total > 0
    assert set(summary.per_table) == {table for t in trials for table in t.tables}
    for name in spec.pretrain:
        assert summary.pretrain_stages[name]["steps"] == spec.pretrain[name].steps


@pytest.mark.parametrize("path", [p for p in FILES if _is_sweep(p)], ids=lambda p: p.name)
def test_sweep_loads_and_plans(path):
    from recon.orchestration.sweep.spec import load_sweep, plan

    spec = load_sweep(path)
    info = plan(spec)
    assert info["trials"] == spec.trials_budget() and info["estimated_hours_total"] > 0
    assert set(info["space"]) == set(spec.domains)
