"""``recon sweep ...``: Optuna over pre-training settings, each trial pre-trained and scored downstream.

    recon sweep plan studies/sweep-demo.yaml [--json]   # trials, probe schedule, estimated compute
    recon sweep run studies/sweep-demo.yaml             # OptunaSearch on Ray Tune, ASHA, MLflow + plots
    recon sweep resume studies/sweep-demo.yaml          # continue: finished trials are never re-run
    recon sweep best studies/sweep-demo.yaml            # best configuration as a study `pretrain:` snippet
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser("sweep", help="Optuna sweep over pre-training settings, scored downstream (YAML)")
    sub = sweep.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="sweep YAML (see studies/sweep-*.yaml)")
        p.add_argument("--storage", help="storage location every node reads and writes (default: the spec's "
                                         "'storage', $RECON_STORAGE, else the output folder)")

    plan = sub.add_parser("plan", help="trials, probe schedule and estimated compute")
    common(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_plan)

    for name, helptext in (("run", "run the sweep on Ray Tune (continues one that was started)"),
                           ("resume", "continue an interrupted sweep: finished trials are not re-run")):
        p = sub.add_parser(name, help=helptext)
        common(p)
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<output_dir>/mlflow.db)")
        p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
        p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started for you")
        p.set_defaults(func=_run, resume=(name == "resume"))

    best = sub.add_parser("best", help="print the best configuration as a study snippet for `pretrain:`")
    common(best)
    best.add_argument("--stage", help="stage name in the snippet (default: <sweep name>-best)")
    best.set_defaults(func=_best)


def _plan(args: argparse.Namespace) -> int:
    from recon.orchestration.sweep.spec import load_sweep, plan

    spec = load_sweep(args.file)
    info = plan(spec)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"sweep {info['sweep']}: {info['trials']} trials ({info['sampler']}), at most {info['concurrency']} at once, "
          f"early stopping: {info['early_stopping']}")
    for path, domain in info["space"].items():
        print(f"  {path}: {domain}")
    if info["grid"]:
        print(f"  grid: {len(info['grid'])} points")
    probe = info["probe"]
    print(f"each trial: {info['pretrain_steps']} pre-training steps; probes at steps {info['probe_steps']}: "
          f"{probe['dataset']} {probe['split']:g} {probe['format']} fine-tunes, {probe['score_on']} score, "
          f"median over seeds {info['seeds']}")
    if info["detectable"]:
        from recon.orchestration.sweep.power import describe

        print(describe(info["detectable"], f"{probe['score_on']} score"))
    else:
        print(f"smallest detectable difference: unknown ({probe['dataset']}'s {probe['score_on']} size is not in "
              "the registry)")
    per = info["estimated_seconds_per_trial"]
    print(f"estimated compute: {per['pretrain']:.0f} s pre-training + {per['probes']:.0f} s probes per trial; "
          f"{info['estimated_hours_total']} h in all, ~{info['estimated_hours_wall']} h wall")
    print(f"  ({info['note']})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from recon.orchestration.cluster.job_outputs import browse_command, job_output_dir, job_working_dir, keep_summary
    from recon.orchestration.sweep.journal import sweep_storage
    from recon.orchestration.sweep.spec import load_sweep
    from recon.orchestration.sweep.runner import run_sweep

    spec = load_sweep(args.file)
    submitted = job_working_dir() is not None
    moved = submitted and job_output_dir("sweep", spec.name, spec.resolved_output_dir(),
                                         sweep_storage(spec, args.storage).uri)
    if moved:  # a submitted job: its outputs go to the storage, not Ray's temporary working dir
        spec = spec.model_copy(update={"output_dir": str(moved)})
    outcome = run_sweep(spec, address=args.address, num_cpus=args.num_cpus, tracking_uri=args.tracking_uri,
                        storage=args.storage, resume=args.resume)
    print(f"sweep {spec.name}: {outcome.trials} trials in the budget, {outcome.finished_before} finished before, "
          f"{outcome.ran} run now; {outcome.completed} completed, {outcome.stopped_early} stopped early, "
          f"{len(outcome.failed)} failed ({outcome.seconds} s)")
    kept = (keep_summary("sweep", spec.name, Path(outcome.artifacts), sweep_storage(spec, args.storage).uri)
            if submitted else outcome.artifacts)
    print(f"artifacts (trials table, best config, plots): {kept}")
    if outcome.best:
        print(outcome.best["snippet"], end="")
    print(f"browse: {browse_command(args.tracking_uri or spec.resolved_tracking_uri())}")
    if outcome.unlogged:
        print(f"recon: {outcome.unlogged} finished trial(s) are not in MLflow ({outcome.tracking_uri} did not answer); "
              f"`recon sweep resume {args.file}` logs them once it does", file=sys.stderr)
    return 1 if outcome.failed or outcome.unlogged else 0


def _best(args: argparse.Namespace) -> int:
    from recon.core.errors import ReconError
    from recon.orchestration.sweep.spec import best_snippet, load_sweep
    from recon.orchestration.sweep.records import load_best

    spec = load_sweep(args.file)
    best = load_best(spec, args.storage)
    if best is None:
        raise ReconError(f"sweep {spec.name!r} has no completed trial yet")
    text = best["snippet"] if not args.stage else best["head"] + best_snippet(spec, best["params"], args.stage)
    print(text, end="")
    return 0
