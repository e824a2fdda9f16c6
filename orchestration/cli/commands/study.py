"""``recon study ...`` and ``recon ui``: plan, run, resume and tabulate studies; browse them in MLflow.

    recon study plan studies/paper.yaml [--json]     # trials per table, finished, compute estimate
    recon study run studies/demo.yaml                # pre-training stages, Ray Tune grid, MLflow, tables
    recon study resume studies/demo.yaml             # continue after an interruption, nothing repeated
    recon study tables studies/demo.yaml             # regenerate tables/plots/pilot from MLflow alone
    recon ui studies/demo.yaml                       # mlflow ui on 127.0.0.1 with the study's store

Every process these commands start (this one, the MLflow server of ``recon ui``, Ray and its workers)
runs with MLflow's usage telemetry, Ray's usage stats and the Hugging Face Hub's telemetry off unless
the user set those variables (``recon.core.privacy.OFFLINE_ENV``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

from recon.core.errors import ReconError


def register(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser("study", help="plan / run / resume / tabulate a study (YAML spec)")
    sub = study.add_subparsers(dest="study_command", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="study YAML (see studies/)")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<output_dir>/mlflow.db)")

    plan = sub.add_parser("plan", help="trials per table, finished trials, estimated compute")
    common(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--trials", action="store_true", help="list every trial (id, table, cell, seed, finished)")
    plan.set_defaults(func=_plan)

    for name, helptext in (("run", "run every unfinished trial on Ray Tune, then write the tables"),
                           ("resume", "continue an interrupted study: finished trials are not repeated")):
        p = sub.add_parser(name, help=helptext)
        common(p)
        p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
        p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started for you")
        p.add_argument("--max-concurrent", type=int, help="override max_concurrent_trials")
        p.add_argument("--verbose", action="store_true", help="show Ray's, transformers' and MLflow's output here "
                                                                  "instead of the run's log file")
        p.add_argument("--storage", help="storage location every node reads and writes (a path, NFS or s3://...; "
                                         "default: the spec's 'storage', $RECON_STORAGE, else the output folder)")
        p.add_argument("--base-url", help="server to fetch missing public datasets from, laid out as "
                                          "<repository>/<commit>/<path> (default: $RECON_DATA_BASE_URL, else GitHub)")
        p.set_defaults(func=_run, resume=(name == "resume"))

    tables = sub.add_parser("tables", help="regenerate tables, plots and the pilot analysis from MLflow")
    common(tables)
    tables.set_defaults(func=_tables)

    ui = subparsers.add_parser("ui", help="start `mlflow ui` on 127.0.0.1 for a study's tracking store")
    ui.add_argument("file", nargs="?", help="study YAML whose store to open")
    ui.add_argument("--tracking-uri", help="MLflow tracking URI (instead of a study file)")
    ui.add_argument("--artifacts-destination", metavar="URI",
                    help="where a cluster's MLflow server kept the artifacts of this store (a Slurm job's "
                         "mlflow_artifacts, e.g. /shared/recon/mlflow-artifacts): served again from there")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default=LOCALHOST,
                    help="address the UI binds to (default 127.0.0.1: this machine only; 0.0.0.0 exposes the "
                         "runs to the network, without authentication)")
    ui.add_argument("--print-only", action="store_true", help="print the command and URL, start nothing")
    ui.set_defaults(func=_ui)


LOCALHOST = "127.0.0.1"


def _offline() -> dict[str, str]:
    """Telemetry opt-outs in this process before anything imports mlflow or starts Ray."""
    from recon.core.privacy import apply_offline_env

    return apply_offline_env()


def _load(args: argparse.Namespace):
    from recon.orchestration.study.spec import load_spec

    _offline()

    spec = load_spec(args.file)
    updates = {}
    if getattr(args, "tracking_uri", None):
        updates["tracking_uri"] = args.tracking_uri
    if getattr(args, "max_concurrent", None):
        updates["ray"] = spec.ray.replace(max_concurrent_trials=args.max_concurrent)
    spec = spec.model_copy(update=updates) if updates else spec
    return _placed(spec, getattr(args, "storage", None))


def _placed(spec, storage: str | None):
    """In a submitted job, the spec with its output folder in the storage (``job_outputs``' rule)."""
    from recon.orchestration.cluster.job_outputs import job_output_dir, job_working_dir
    from recon.orchestration.study.runner import study_storage

    if job_working_dir() is None:  # not a job: nothing to resolve (an s3:// storage would ask the network)
        return spec
    moved = job_output_dir("study", spec.name, spec.resolved_output_dir(), study_storage(spec, storage).uri)
    return spec.model_copy(update={"output_dir": str(moved)}) if moved else spec


def _plan(args: argparse.Namespace) -> int:
    from recon.core.ray_session import cluster_to_join
    from recon.orchestration.study.kept import split_lacking
    from recon.orchestration.study.plan import expand, summarize, unavailable_trials, views_lacking
    from recon.orchestration.study.preflight import study_problems
    from recon.orchestration.study.runner import evaluable_by, study_storage
    from recon.orchestration.study.tracker import StudyTracker
    from recon.orchestration.study.stages import study_data_dir

    spec = _load(args)
    trials = expand(spec)
    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, create=False) if _store_exists(spec) else None
    runs = tracker.trial_runs() if tracker and tracker.exists else {}
    finished = set(runs)
    missing = unavailable_trials(spec, trials, study_data_dir(spec))
    lacking = views_lacking(trials, runs)
    store = study_storage(spec)
    from_weights = split_lacking(trials, lacking, store, evaluable_by(spec))[0] if lacking else {}
    summary = summarize(spec, trials, finished, missing, lacking, from_weights)
    runnable = [t for t in trials if t.trial_id not in finished and t.trial_id not in missing]
    problems = study_problems(spec, runnable, store, spec.resolved_tracking_uri(),
                              local_ray=cluster_to_join(spec.ray.address) is None)
    if args.json:
        payload = summary.to_dict()
        payload["problems"] = [str(p) for p in problems]
        if args.trials:
            payload["trial_list"] = [{**t.to_dict(), "finished": t.trial_id in finished} for t in trials]
        print(json.dumps(payload, indent=2))
        return 1 if problems else 0
    print(f"study {summary.study}: {summary.trials} trials, {summary.finished} finished "
          f"(store {spec.resolved_tracking_uri()})")
    for table, row in summary.per_table.items():
        print(f"  {table:<10} {row['trials']:>5} trials  {row['finished']:>5} finished  "
              f"{row['unavailable']:>5} cannot run here")
    for stage, info in summary.pretrain_stages.items():
        print(f"  pretrain {stage}: {info['objective']}, {info['steps']} steps, ~{info['estimated_hours']} h")
    print(f"estimated compute: {summary.estimated_hours_total} h in all, {summary.estimated_hours_remaining} h left")
    print(f"  ({summary.note})")
    if summary.views_lacking:
        lack = summary.views_lacking
        kept, retrain = lack["from_weights"], lack["retrain"]
        print(f"test views not scored: {lack['trials']} finished trials lack {', '.join(lack['views'])}; "
              f"{lack['note']}")
        if kept["trials"]:
            print(f"  from kept weights (no training): {kept['trials']} trials, {', '.join(kept['views'])}")
        if retrain["trials"]:
            print(f"  need training again (no weights kept): {retrain['trials']} trials, "
                  f"{', '.join(retrain['views'])}, ~{lack['retrain_hours']} h")
    if summary.unavailable:
        rest = ("`recon study run` runs the rest and the tables say why these are blank" if runnable else
                "no unfinished trial can run here, so `recon study run` would stop (exit 2)")
        print(f"cells that cannot run here ({len(missing)} trials; {rest}):")
        for group in _group_unavailable(trials, missing):
            print(f"  {group}")
    if args.trials:
        for t in trials:
            mark = "done" if t.trial_id in finished else "todo"
            print(f"  {t.trial_id} {mark} {','.join(t.tables)} {t.dataset} {t.setting} {t.format} {t.model} s{t.seed}")
    if problems:
        print("problems (`recon study run` refuses until they are fixed; public datasets that are missing are "
              "fetched by the run):")
        for problem in problems:
            print(f"  {problem}")
        return 1
    return 1 if missing and not runnable and len(finished) < len(trials) else 0


def _group_unavailable(trials, missing: dict[str, str]) -> list[str]:
    """One line per dataset, setting and reason: the formats, models and trial count it covers."""
    groups: dict[tuple, dict] = {}
    for t in trials:
        if t.trial_id in missing:
            g = groups.setdefault((t.dataset, t.setting, missing[t.trial_id]), {"formats": [], "models": [], "n": 0})
            g["n"] += 1
            for key, value in (("formats", t.format), ("models", t.model)):
                if value not in g[key]:
                    g[key].append(value)
    return [f"{dataset} {setting} [{'/'.join(g['formats'])} x {'/'.join(g['models'])}, {g['n']} trials]: {reason}"
            for (dataset, setting, reason), g in groups.items()]


def _store_exists(spec) -> bool:
    from recon.orchestration.tracking.uri import local_store_exists

    return local_store_exists(spec.resolved_tracking_uri())


def ui_command(uri: str, port: int, host: str = LOCALHOST, artifacts_destination: str | None = None) -> list[str]:
    """``mlflow ui`` for one user on this machine: bound to ``host``, one server worker; with
    ``artifacts_destination`` it serves the artifacts a cluster's server stored there (``mlflow-artifacts:/``)."""
    from recon.orchestration.tracking.server import store_options

    options = store_options(uri, artifacts_destination)
    if "--workers" not in options:
        options += ["--workers", "1"]
    return [sys.executable, "-m", "mlflow", "ui", *options, "--host", host, "--port", str(port)]


def ui_env() -> dict[str, str]:
    """The MLflow server's environment: this one with the telemetry opt-outs (a user's setting wins)."""
    from recon.core.privacy import offline_env

    return {**os.environ, **offline_env()}


def experiment_url(base: str, experiment_id: str | None) -> str:
    """The study's runs table (MLflow 3.17's UI picks GenAI or model-training pages by its
    ``workflowType``; a study is model training), or the experiment list."""
    if experiment_id is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _experiment_id(spec) -> str | None:
    from recon.orchestration.study.tracker import StudyTracker

    if not _store_exists(spec):
        return None
    try:
        tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, create=False)
    except Exception:  # noqa: BLE001 - an unreadable store: the UI still starts on the list
        return None
    return tracker.experiment.experiment_id if tracker.exists else None


def _only_experiment(uri: str) -> str | None:
    """The experiment of a local store that holds one (a submitted study's, named by ``--tracking-uri``)."""
    from recon.orchestration.tracking.uri import local_store_exists, sqlite_path

    if sqlite_path(uri) is None or not local_store_exists(uri):
        return None
    try:
        from mlflow.tracking import MlflowClient

        found = [e for e in MlflowClient(uri).search_experiments() if e.name != "Default"]
    except Exception:  # noqa: BLE001 - an unreadable store: the UI still starts on the list
        return None
    return found[0].experiment_id if len(found) == 1 else None


def _ui_hint(spec, file: str) -> str:
    """``recon ui FILE`` here; in a submitted job the store's URI, which the submitting machine can open."""
    from recon.orchestration.cluster.job_outputs import browse_command, job_working_dir

    if job_working_dir() is not None:
        return browse_command(spec.resolved_tracking_uri(), submitted=True)
    return f"recon ui {shlex.quote(file)}" + (f" --tracking-uri {spec.tracking_uri}" if spec.tracking_uri else "")


def _run(args: argparse.Namespace) -> int:
    from recon.core.console import quiet_console
    from recon.orchestration.report.findings import findings_paragraph
    from recon.orchestration.report.summary import write_summary
    from recon.orchestration.study.tracker import StudyTracker
    from recon.orchestration.cluster.job_outputs import keep_summary
    from recon.orchestration.study.runner import run_study, study_storage

    spec = _load(args)
    if args.resume:
        tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, create=False) if _store_exists(spec) else None
        if tracker is None or not tracker.exists:
            raise ReconError(f"study {spec.name!r} has not been started (no experiment in "
                             f"{spec.resolved_tracking_uri()}): use `recon study run {args.file}`")
    with quiet_console(spec.resolved_output_dir() / "logs", "run" if not args.resume else "resume",
                       verbose=args.verbose) as (say, log_path):
        if log_path:
            say(f"logs of Ray, transformers and MLflow: {log_path}  (--verbose shows them here)")
        outcome = run_study(spec, address=args.address, num_cpus=args.num_cpus, storage=args.storage,
                            base_url=args.base_url, log=say)
        say(f"trials: {outcome.trials} in all, {outcome.skipped} already done, {outcome.harvested} logged from storage, "
            f"{outcome.ran} run now, {len(outcome.failed)} failed; {outcome.logged} in MLflow"
            + (f", {len(outcome.unlogged)} not yet (server down)" if outcome.unlogged else "")
            + (f"; {len(outcome.evaluated)} given new views from kept weights" if outcome.evaluated else "")
            + (f"; {len(outcome.views_failed)} could not be scored from kept weights (see above)"
               if outcome.views_failed else "")
            + (f"; {len(outcome.views_not_scored)} lack views and kept no weights (see `recon study plan`)"
               if outcome.views_not_scored else "") + f" ({outcome.seconds} s)")
        if outcome.unlogged:
            summary_dir = write_summary(spec, log=say, storage=study_storage(spec, args.storage))
        else:
            summary_dir = write_summary(spec, log=say)
        finding = findings_paragraph(summary_dir, {m.name: m.paper_label for m in spec.models},
                                     _stage_heldout(spec, args.storage))
        if finding:
            say("")
            say(finding)
        say(f"tables and plots: {keep_summary('study', spec.name, summary_dir, study_storage(spec, args.storage).uri)}")
        say(f"browse: {_ui_hint(spec, args.file)}")
        if outcome.unlogged:
            say(f"recon: {len(outcome.unlogged)} finished trial(s) are not in MLflow: the tracking server "
                f"{outcome.tracking_uri} did not answer. Their results are in storage ({outcome.storage}) and the tables "
                f"above were built from there; when the server answers, `recon study resume {args.file}` logs them "
                "(nothing trains again) and rebuilds the tables from MLflow.")
    return 1 if outcome.failed or outcome.unlogged or outcome.views_failed else 0


def _stage_heldout(spec, storage: str | None) -> dict[str, dict]:
    """Held-out figures of the study's finished pre-training stages, from their records in storage."""
    from recon.orchestration.study.stages import STAGE_FILE
    from recon.orchestration.study.runner import study_storage

    store = study_storage(spec, storage)
    out = {}
    for name in spec.pretrain:
        rel = f"pretrain/{name}-{spec.stage_hash(name)}/{STAGE_FILE}"
        if store.exists(rel):
            out[name] = store.read_json(rel).get("heldout") or {}
    return out


def _tables(args: argparse.Namespace) -> int:
    from recon.orchestration.report.summary import write_summary

    spec = _load(args)
    if not _store_exists(spec):
        raise ReconError(f"no tracking store at {spec.resolved_tracking_uri()}: run the study first")
    print(f"tables and plots: {write_summary(spec)}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    offline = _offline()
    spec = None
    if args.file:
        spec = _load(args)
        uri = spec.resolved_tracking_uri()
    elif args.tracking_uri:
        uri = args.tracking_uri
    else:
        raise ReconError("recon ui needs a study file or --tracking-uri")
    from recon.orchestration.tracking.uri import is_remote

    if is_remote(uri):  # a tracking server already serves its own UI: point at it, start nothing
        print(f"MLflow UI: {uri}  (a tracking server; on a cluster reach the head's private address through "
              "`ray dashboard cluster.yaml`-style port forwarding or `ssh -L 5000:HEAD_PRIVATE_IP:5000 ...`)")
        return 0
    command = ui_command(uri, args.port, args.host, args.artifacts_destination)
    shown = LOCALHOST if args.host in ("0.0.0.0", "::", "") else args.host
    base = f"http://{'[' + shown + ']' if ':' in shown else shown}:{args.port}"
    print(f"MLflow UI: {experiment_url(base, _experiment_id(spec) if spec else _only_experiment(uri))}  (store {uri})")
    if args.host != LOCALHOST:
        print(f"warning: bound to {args.host}, not {LOCALHOST}: anyone who can reach this machine on port "
              f"{args.port} sees and can change the runs (MLflow's UI has no login)")
    print("telemetry: " + " ".join(f"{k}={v}" for k, v in offline.items()) +
          "  (recon turns it off; a value you set yourself is kept)")
    print("command: " + " ".join(shlex.quote(c) for c in command))
    if args.print_only:
        return 0
    return subprocess.call(command, env=ui_env())
