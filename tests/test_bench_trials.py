"""bench/bench_trials.py's split of a Tune run's slot time into start-up, cold and warm trials and tail."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_trials.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_trials", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(pid: int, started: float, seconds: float, fit_s: float) -> dict:
    return {"node": {"pid": pid, "started": started}, "seconds": seconds, "fit_s": fit_s}


def test_slot_time_splits_each_lane_into_startup_cold_warm_and_tail(bench):
    # lane 1: first trial 3.0-13.0 (fit 8), next starts 13.5 and runs 5 s (fit 4.5)
    # lane 2: first trial 3.2-13.2 (fit 8), next starts 13.4 and runs 6 s (fit 5.5); Tune returns at 20
    results = [_result(2, 13.4, 6, 5.5), _result(1, 3.0, 10, 8), _result(1, 13.5, 5, 4.5), _result(2, 3.2, 10, 8)]
    slots = bench.slot_time(results, tune_start=0.0, tune_end=20.0)
    assert slots["lanes"] == 2 and slots["warm_trials"] == 2
    assert slots["startup_s"] == pytest.approx((3.0 + 3.2) / 2)
    assert slots["cold_s"] == pytest.approx(2.0)
    # warm: gap since the lane's previous trial ended + the trial's own time around fit
    assert slots["warm_s"] == pytest.approx(((0.5 + 0.5) + (0.2 + 0.5)) / 2)
    assert slots["warm_max_s"] == pytest.approx(1.0)
    assert slots["tail_s"] == pytest.approx(((20 - 18.5) + (20 - 19.4)) / 2)
    # every slot-second is accounted for: fit + outside-fit parts = wall x lanes
    fit = sum(r["fit_s"] for r in results)
    outside = 2 * (slots["startup_s"] + slots["cold_s"] + slots["tail_s"]) + 2 * slots["warm_s"]
    assert fit + outside == pytest.approx(20.0 * 2)
