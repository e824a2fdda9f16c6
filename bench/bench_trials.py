"""Trials against their compute floor: the demo's fine-tuning trials through ``recon study run`` vs in-process.

    python bench/bench_trials.py                              # 6 of the demo's MiniLM trials as they are, 2 at once
    python bench/bench_trials.py --trials 12 --max-train-steps 8 --max-eval 100   # short trials: the fixed cost
    python bench/bench_trials.py --floor-lanes 1              # the floor in ONE process, serial

Both sides run the same trials, planned from a temporary copy of ``studies/demo.yaml`` (the
MiniLM model only, unless ``--with-pretrain``: a CP stage would dominate; seeds / formats / splits
trimmed to ``--trials``; its own output folder, MLflow store, storage and node cache), in one run:

(a) tune: :func:`recon.orchestration.study.runner.run_study` on that spec, i.e. a local Ray started with
    the spec's ``num_cpus`` (2), Tune with ``max_concurrent_trials`` (2), storage publishing and the
    driver's MLflow logging of every trial. ``wall_tune`` is the ``_tune`` call (Tuner set-up to the
    last trial logged); ``wall_study`` adds the study's fixed costs (Ray start, MLflow, data publishing).
(b) floor: the same trials back to back in ``--floor-lanes`` processes (default: the concurrency, so
    both sides run the same number of trials at once on the same loaded cores), round-robin, each
    process with the spec's torch threads. Each lane first warms up (every (split, format) it will
    run, one optimizer step: imports, encoder, tokenizer, datasets, kernels), then calls
    ``run_finetune`` per trial. The floor of a trial is the time inside ``recon.models.train.loop.fit``
    (its training steps and its dev/test evaluations: the work itself), so the floor does not move
    when ``run_finetune``'s own preparation gets cheaper; ``in-process extra`` reports what
    ``run_finetune`` spends around ``fit`` in a warm process.

Figures (seconds; every number is taken on whatever else loads the machine at the time):

* per-trial fixed overhead = (wall_tune * concurrency - sum of floors) / n: what a trial costs on
  top of its compute when run through Tune, with the lanes kept busy;
* ratio = wall_tune / floor_wall, floor_wall = the largest lane's sum of floors (lanes run at once;
  with ``--floor-lanes 1``: sum of floors / concurrency);
* the same two figures against the trials' own time inside ``fit`` in the Tune run (``fit_s`` of
  each result): both terms then come from the same minutes, so a machine whose load drifts between
  the phases (other users) does not turn into a negative or inflated overhead;
* identical: each trial's test metrics and best epoch from Tune equal the floor's (same config and seed).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the study copy

def _shape(n: int, splits: list, formats: list, seeds: list) -> tuple[list, list, list]:
    """Splits x formats x seeds with exactly ``n`` trials when possible, else the fewest above ``n``."""
    best = None
    for ns in range(1, len(splits) + 1):
        for nf in range(1, len(formats) + 1):
            k = math.ceil(n / (ns * nf))
            if k > len(seeds):
                continue
            total = ns * nf * k
            score = (total - n, -(ns * nf))  # exact first, then the most cells (variety of data)
            if best is None or score < best[0]:
                best = (score, ns, nf, k)
    if best is None:
        return splits, formats, seeds
    _, ns, nf, k = best
    return splits[:ns], formats[:nf], seeds[:k]


def make_spec(args, tmp: Path) -> Path:
    import yaml

    from recon.orchestration.study.spec import load_spec
    from recon.orchestration.study.stages import study_data_dir

    raw = yaml.safe_load((REPO / "studies" / "demo.yaml").read_text())
    if not args.with_pretrain:
        raw["models"] = [m for m in raw["models"] if "checkpoint" not in m]
        raw.pop("pretrain", None)
        raw["seconds_per_example"] = {m["name"]: v for m in raw["models"]
                                      for k, v in raw.get("seconds_per_example", {}).items() if k == m["name"]}
    per_model = max(1, math.ceil(args.trials / len(raw["models"])))
    grid = raw["grids"][0]
    grid["splits"], grid["formats"], raw["seeds"] = _shape(per_model, grid["splits"], grid["formats"], raw["seeds"])
    raw["grids"] = [grid]
    if args.max_train_steps is not None:
        raw["training"]["max_train_steps"] = args.max_train_steps
    if args.max_eval is not None:
        raw["data"]["max_eval"] = args.max_eval
    data_dir = study_data_dir(load_spec(REPO / "studies" / "demo.yaml"))
    if data_dir:
        raw["data"]["data_dir"] = data_dir
    raw["ray"]["max_concurrent_trials"] = args.concurrency
    raw["ray"]["num_cpus"] = max(args.concurrency, int(raw["ray"].get("num_cpus") or 1))
    raw["output_dir"] = str(tmp / "out")
    raw["name"] = "bench-trials"
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def planned(spec_path: Path):
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec
    from recon.orchestration.study.stages import study_data_dir

    spec = load_spec(spec_path)
    return spec, expand(spec), study_data_dir(spec)


# ---------------------------------------------------------------- (b) the floor, one process per lane

def lane_main(path: str) -> None:
    """One floor lane (a subprocess): warm up, then each trial through run_finetune; JSON lines out."""
    job = json.loads(Path(path).read_text())
    import torch

    torch.set_num_threads(job["threads"])
    from recon.models.train import finetune, loop as training
    from recon.orchestration.study.trial import Trial
    from recon.orchestration.study.trainers import resolve_references

    inside = {"s": 0.0}
    real_fit = training.fit

    def timed_fit(*a, **k):
        start = time.perf_counter()
        try:
            return real_fit(*a, **k)
        finally:
            inside["s"] = time.perf_counter() - start

    training.fit = timed_fit
    trials = [Trial.from_dict(t) for t in job["trials"]]
    cfgs = [resolve_references(t, {}, job["data_dir"]) for t in trials]
    start = time.perf_counter()
    seen = set()
    for cfg in cfgs:  # warm-up: one optimizer step per (model, split, format) this lane runs
        key = (cfg.model, cfg.encoder, cfg.split, cfg.input_format)
        if key not in seen:
            seen.add(key)
            finetune.run_finetune(cfg.replace(training=cfg.training.replace(max_train_steps=1, epochs=1)))
    warm = time.perf_counter() - start
    for trial, cfg in zip(trials, cfgs):
        start = time.perf_counter()
        out = finetune.run_finetune(cfg)
        total = time.perf_counter() - start
        print(json.dumps({"trial_id": trial.trial_id, "floor_s": inside["s"], "run_s": total,
                          "test": out["test"], "best_epoch": out["best_epoch"], "warmup_s": warm}), flush=True)


def run_floor(trials, data_dir, lanes: int, threads: int, tmp: Path, env: dict) -> dict:
    jobs = [[t.to_dict() for t in trials[i::lanes]] for i in range(lanes)]
    procs = []
    start = time.perf_counter()
    for i, job in enumerate(jobs):
        if not job:
            continue
        path = tmp / f"lane{i}.json"
        path.write_text(json.dumps({"trials": job, "data_dir": data_dir, "threads": threads}))
        procs.append(subprocess.Popen([sys.executable, __file__, "--lane", str(path)], stdout=subprocess.PIPE,
                                      text=True, env=env, cwd=REPO))
    rows, lane_floor = {}, []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"floor lane failed ({proc.returncode})")
        lane = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        lane_floor.append(sum(r["floor_s"] for r in lane))
        rows.update({r["trial_id"]: r for r in lane})
    return {"rows": rows, "lane_floor": lane_floor, "wall": time.perf_counter() - start}


# ---------------------------------------------------------------- (a) the real study path

def run_tune(spec_path: Path) -> dict:
    from recon.orchestration.study import runner as tune_runner
    from recon.orchestration.study.spec import load_spec
    spec = load_spec(spec_path)
    timing = {}
    real_tune = tune_runner._tune

    def timed_tune(*a, **k):
        start, timing["tune_start_epoch"] = time.perf_counter(), time.time()
        try:
            return real_tune(*a, **k)
        finally:
            timing["tune"], timing["tune_end_epoch"] = time.perf_counter() - start, time.time()

    tune_runner._tune = timed_tune
    try:
        outcome = tune_runner.run_study(spec, log=lambda msg: print(f"    {msg}", file=sys.stderr))
    finally:
        tune_runner._tune = real_tune
    store = tune_runner.study_storage(spec)
    results = {}
    _, trials, _ = planned(spec_path)
    for t in trials:
        rel = f"results/{t.trial_id}/result.json"
        if store.exists(rel):
            results[t.trial_id] = store.read_json(rel)
    return {"outcome": outcome, "wall_tune": timing.get("tune", float("nan")), "results": results,
            "tune_start": timing.get("tune_start_epoch"), "tune_end": timing.get("tune_end_epoch")}


def by_worker(results) -> list[list[dict]]:
    """Trial results grouped by the worker process that ran them (``node.pid``), each lane in start order."""
    by_pid: dict = {}
    for r in sorted(results, key=lambda r: r["node"]["started"]):
        by_pid.setdefault(r["node"]["pid"], []).append(r)
    return list(by_pid.values())


def slot_time(results: list[dict], tune_start: float, tune_end: float) -> dict:
    """Where the Tune run's slot-seconds went, from each trial's ``node`` record (pid, started) and its
    ``seconds`` / ``fit_s``, lane by lane (a lane = one reused worker process):

    * ``startup``: from the ``_tune`` call to a lane's first trial entering its trainer (Tuner set-up,
      the worker process and Ray's imports), once per lane;
    * ``cold``: a lane's first trial, its trainer time around ``fit`` (torch / transformers imports,
      encoder load, first tokenization), once per lane;
    * ``warm``: every later trial, its trainer time around ``fit`` plus the gap since the lane's previous
      trial ended (publishing its outputs, its final report, Tune stopping it and handing the worker the
      next config, the next trial fetching its inputs): the cost a trial adds to a warm worker;
    * ``tail``: from a lane's last trial ending to the ``_tune`` call returning (the other lane finishing,
      the last MLflow logging).
    """
    by_lane = by_worker(results)
    startup = cold = tail = 0.0
    warm: list[float] = []
    for rows in by_lane:
        startup += rows[0]["node"]["started"] - tune_start
        cold += rows[0]["seconds"] - rows[0]["fit_s"]
        for prev, row in zip(rows, rows[1:]):
            warm.append(row["node"]["started"] - (prev["node"]["started"] + prev["seconds"])
                        + row["seconds"] - row["fit_s"])
        tail += tune_end - (rows[-1]["node"]["started"] + rows[-1]["seconds"])
    n = len(by_lane)
    return {"lanes": n, "startup_s": startup / n, "cold_s": cold / n,
            "warm_trials": len(warm), "warm_s": sum(warm) / len(warm) if warm else float("nan"),
            "warm_around_fit_s": (sum(r["seconds"] - r["fit_s"] for rows in by_lane for r in rows[1:]) / len(warm)
                                  if warm else float("nan")),
            "warm_max_s": max(warm, default=float("nan")), "tail_s": tail / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6, help="trials to run (the demo's grid trimmed to about this)")
    ap.add_argument("--max-train-steps", type=int, default=None,
                    help="cap optimizer steps per trial (default: the demo's own epochs; 8 isolates the fixed cost)")
    ap.add_argument("--max-eval", type=int, default=None, help="dev/test cap (default: studies/demo.yaml's)")
    ap.add_argument("--concurrency", type=int, default=2, help="trials at once (Tune and floor lanes)")
    ap.add_argument("--floor-lanes", type=int, default=None, help="floor processes (default: --concurrency)")
    ap.add_argument("--with-pretrain", action="store_true", help="keep the CP model (runs its pre-training)")
    ap.add_argument("--skip-floor", action="store_true")
    ap.add_argument("--skip-tune", action="store_true")
    ap.add_argument("--tune-first", action="store_true",
                    help="run the Tune phase before the floor (a machine that slows under sustained load then "
                         "shows up as a floor slower than Tune's fit instead of the reverse)")
    ap.add_argument("--cache-dir", default=None, help="node cache ($RECON_CACHE_DIR; default: a fresh temporary one)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--lane", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.lane:
        return lane_main(args.lane)
    lanes = args.floor_lanes or args.concurrency
    tmp = Path(tempfile.mkdtemp(prefix="bench-trials-"))
    try:
        os.environ["RECON_CACHE_DIR"] = args.cache_dir or str(tmp / "cache")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        env = dict(os.environ)
        spec_path = make_spec(args, tmp)
        spec, trials, data_dir = planned(spec_path)
        import recon.models as recon_models

        threads = max(1, int(spec.ray.cpus_per_trial))
        n = len(trials)
        print(f"{n} trials ({', '.join(sorted({t.model for t in trials}))}; splits "
              f"{sorted({t.setting for t in trials})}, formats {sorted({t.format for t in trials})}, "
              f"seeds {sorted({t.seed for t in trials})}), "
              f"{args.max_train_steps or str(trials[0].config['training']['epochs']) + ' epochs'} per trial, "
              f"max_eval {trials[0].config['data']['max_eval']}, "
              f"{args.concurrency} at once, {threads} torch thread(s) each; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
              f"code {Path(recon_models.__file__).parent}",
              flush=True)
        floor = tune = None
        if args.tune_first and not args.skip_tune:
            tune = run_tune(spec_path)
        if not args.skip_floor:
            floor = run_floor(trials, data_dir, lanes, threads, tmp, env)
            rows = floor["rows"].values()
            sum_floor = sum(r["floor_s"] for r in rows)
            extra = sum(r["run_s"] - r["floor_s"] for r in rows) / max(1, len(rows))
            floor_wall = max(floor["lane_floor"]) if lanes > 1 else sum_floor / args.concurrency
            print(f"floor: {lanes} lane(s), sum of floors {sum_floor:.1f}s ({sum_floor / n:.2f}s/trial), floor_wall "
                  f"{floor_wall:.1f}s; in-process extra around fit {extra:.2f}s/trial; warm-up "
                  f"{max(r['warmup_s'] for r in rows):.1f}s; lanes' wall {floor['wall']:.1f}s", flush=True)
        if not args.skip_tune:
            tune = tune or run_tune(spec_path)
            oc = tune["outcome"]
            trainer_s = sum(r.get("seconds", 0) for r in tune["results"].values())
            print(f"tune: wall_tune {tune['wall_tune']:.1f}s, wall_study {oc.seconds:.1f}s, ran {oc.ran}, "
                  f"failed {len(oc.failed)}, logged {oc.logged}; sum of trainer seconds {trainer_s:.1f}s "
                  f"({trainer_s / max(1, len(tune['results'])):.2f}s/trial)", flush=True)
        figures = {"n": n, "concurrency": args.concurrency, "max_train_steps": args.max_train_steps,
                   "max_eval": args.max_eval, "loadavg": os.getloadavg()[0]}
        if tune:
            res = list(tune["results"].values())
            fit_sum = sum(r.get("fit_s", 0.0) for r in res)
            in_trial = sum(r.get("seconds", 0.0) - r.get("fit_s", 0.0) for r in res) / max(1, len(res))
            direct = (tune["wall_tune"] * args.concurrency - fit_sum) / n
            ratio_direct = tune["wall_tune"] / (fit_sum / args.concurrency)
            figures.update(overhead_direct_s=direct, ratio_direct=ratio_direct, fit_sum_tune=fit_sum,
                           trainer_minus_fit_s=in_trial, wall_tune=tune["wall_tune"], wall_study=oc.seconds)
            if all("node" in r for r in res):
                slots = slot_time(res, tune["tune_start"], tune["tune_end"])
                print(f"worker processes: {slots['lanes']} for {len(res)} trials; trainer time around fit: first trial "
                      f"of a worker {slots['cold_s']:.2f}s, later trials {slots['warm_around_fit_s']:.2f}s", flush=True)
                figures.update({f"slots_{k}": v for k, v in slots.items()})
                print(f"per lane (reused worker), slot time outside fit: start-up {slots['startup_s']:.2f}s and cold "
                      f"first trial {slots['cold_s']:.2f}s once per lane; tail {slots['tail_s']:.2f}s once per lane; "
                      f"per-trial overhead on a warm worker {slots['warm_s']:.2f}s (max {slots['warm_max_s']:.2f}s, "
                      f"{slots['warm_trials']} trials)", flush=True)
            print(f"vs the trials' own fit time in this Tune run (robust to load drift between the phases): "
                  f"per-trial fixed overhead {direct:.2f}s (= (wall_tune {tune['wall_tune']:.1f} x {args.concurrency}"
                  f" - sum of fit {fit_sum:.1f}) / {n}; of which inside the trainer around fit {in_trial:.2f}s); "
                  f"ratio {ratio_direct:.3f} (load average {os.getloadavg()[0]:.1f})", flush=True)
        if floor and tune:
            overhead = (tune["wall_tune"] * args.concurrency - sum_floor) / n
            ratio = tune["wall_tune"] / floor_wall
            got = tune["results"]
            same = [tid for tid, r in floor["rows"].items()
                    if tid in got and got[tid]["test"] == r["test"] and got[tid]["best_epoch"] == r["best_epoch"]]
            figures.update(overhead_s=overhead, ratio=ratio, wall_tune=tune["wall_tune"], wall_study=oc.seconds,
                           sum_floor=sum_floor, floor_wall=floor_wall, identical=len(same))
            first_of_lane = {id(rows[0]) for rows in by_worker(got.values())}
            slow = {tid: got[tid]["fit_s"] / r["floor_s"] for tid, r in floor["rows"].items() if tid in got}
            cold = [v for tid, v in slow.items() if id(got[tid]) in first_of_lane]
            warm = [v for tid, v in slow.items() if id(got[tid]) not in first_of_lane]
            figures.update(fit_vs_floor_cold=cold, fit_vs_floor_warm=warm)
            print("the same trial's time in fit, Tune / floor: first trial of a lane "
                  + ", ".join(f"{v:.3f}" for v in cold) + "; later trials " + ", ".join(f"{v:.3f}" for v in warm),
                  flush=True)
            print(f"vs the floor phase: per-trial fixed overhead {overhead:.2f}s  "
                  f"(= (wall_tune {tune['wall_tune']:.1f} x "
                  f"{args.concurrency} - sum of floors {sum_floor:.1f}) / {n}); ratio wall_tune / floor_wall "
                  f"{ratio:.3f}; study incl. Ray start {oc.seconds / floor_wall:.3f}; identical results "
                  f"{len(same)}/{n} (load average {os.getloadavg()[0]:.1f})", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
