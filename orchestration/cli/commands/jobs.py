"""``recon jobs``: follow the jobs ``recon submit`` started, on a Ray cluster (Ray Jobs) or on Slurm.

    recon jobs list [--slurm]                 # Ray Jobs of the cluster, or your Slurm jobs
    recon jobs status ID [--json]             # an ended job: also where its outputs are (tables, browse)
    recon jobs logs ID [--follow]             # --follow: until the job ends; exit 1 unless it succeeded
    recon jobs stop ID                        # Ray's stop_job, or scancel

The backend comes from a flag or from the job id: ``--slurm`` means Slurm and ``--address`` a Ray cluster;
otherwise an id of digits (``12345``, an array task ``12345_7``) is a Slurm job, any other
(``raysubmit_...``) a Ray Job. The Ray address is the cluster's dashboard (Jobs) URL; default ``$RAY_ADDRESS``
when it is http(s), else http://127.0.0.1:8265 (what ``ray dashboard cluster.yaml`` forwards); token-
authenticated clusters need ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` (or ``RAY_AUTH_TOKEN_PATH``).
Slurm is reached through its own clients (``squeue``, ``scontrol``, ``sacct``, ``scancel``) with their usual
configuration. KubeRay jobs are followed with kubectl (``recon submit --k8s`` prints how).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import re
import sys
from pathlib import Path
from typing import Optional

ADDRESS_HELP = ("Ray Jobs (dashboard) URL of the cluster (default: $RAY_ADDRESS if http(s), else "
                "http://127.0.0.1:8265); implies a Ray Job")
SLURM_ID = re.compile(r"^\d+(_\d+)?$")


def register(subparsers: argparse._SubParsersAction) -> None:
    jobs = subparsers.add_parser("jobs", help="list / status / logs / stop jobs on a Ray cluster or on Slurm")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)
    lst = jsub.add_parser("list", help="Ray Jobs on the cluster, or (--slurm) your Slurm jobs; newest first")
    lst.add_argument("--address", help=ADDRESS_HELP)
    lst.add_argument("--slurm", action="store_true", help="your Slurm jobs (squeue, and sacct's last 7 days)")
    lst.add_argument("--all-users", action="store_true", help="--slurm: everyone's jobs")
    lst.add_argument("--name", help="--slurm: only jobs of this name (e.g. recon, the default --slurm-job-name)")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)
    for name, helptext, fn in (("status", "state and message of one job", _status),
                               ("logs", "the job's output so far (--follow: stream until it ends)", _logs),
                               ("stop", "stop a running job (Ray's stop_job, or scancel)", _stop)):
        p = jsub.add_parser(name, help=helptext)
        p.add_argument("job_id", metavar="ID", help="a Ray submission id (raysubmit_...) or a Slurm job id (12345)")
        p.add_argument("--address", help=ADDRESS_HELP)
        p.add_argument("--slurm", action="store_true", help="ID is a Slurm job (the default for an id of digits)")
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
            p.add_argument("--log-dir", help="Slurm: the folder of the job's output files, when Slurm has forgotten "
                                             "the job (default: runs/slurm)")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=fn)


def backend(args: argparse.Namespace) -> str:
    """``slurm`` or ``ray``: the flag given, else the job id's form."""
    if getattr(args, "slurm", False) and getattr(args, "address", None):
        from recon.core.errors import ReconError

        raise ReconError("--slurm and --address name two different clusters: give one")
    if getattr(args, "slurm", False):
        return "slurm"
    if getattr(args, "address", None):
        return "ray"
    job_id = getattr(args, "job_id", None)
    return "slurm" if job_id is not None and SLURM_ID.match(str(job_id).strip()) else "ray"


def _address(args) -> str:
    from recon.orchestration.cluster.jobs import default_address

    return args.address or default_address()


# ---------------------------------------------------------------- following (also used by recon submit)

def follow_ray(job_id: str, address: str) -> int:
    """Stream the job's output until it ends, then its status and (again) where its outputs are."""
    from recon.orchestration.cluster import jobs
    from recon.orchestration.cluster.job_outputs import repeat_closing_lines

    chunks = []
    for chunk in jobs.follow_logs(job_id, address):
        chunks.append(chunk)
        sys.stdout.write(chunk)
        sys.stdout.flush()
    final = jobs.wait(job_id, address, timeout_s=60)
    print(f"job {job_id} {final}")
    repeat_closing_lines("".join(chunks))
    return 0 if final == "SUCCEEDED" else 1


def follow_slurm(job_id: str, log_dir: Optional[str | Path] = None) -> int:
    """Stream the Slurm job's output until it has ended; 0 only when it COMPLETED with exit code 0."""
    from recon.orchestration.cluster import slurm

    for chunk in slurm.logs(job_id, follow=True, log_dir=log_dir):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    job = slurm.status(job_id)
    print(f"Slurm job {job.job_id} {job.state}" + (f" (exit code {job.exit_code})" if job.exit_code else ""))
    return 0 if job.state == "COMPLETED" and job.exit_code in ("", "0:0") else 1


# ---------------------------------------------------------------- subcommands

def _when(ms) -> str:
    if not ms:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _list(args: argparse.Namespace) -> int:
    if backend(args) == "slurm":
        from recon.orchestration.cluster import slurm

        rows = slurm.list_jobs(all_users=args.all_users, name=args.name)
        if args.json:
            print(json.dumps([dataclasses.asdict(j) for j in rows], indent=2))
        elif not rows:
            print("no Slurm jobs")
        else:
            print(f"{'ID':<12} {'STATE':<11} {'ELAPSED':>10}  {'NAME':<16} NODES / REASON")
            for j in rows:
                print(f"{j.job_id:<12} {j.state:<11} {j.elapsed:>10}  {j.name:<16} {j.nodes or j.reason}")
        return 0
    if args.all_users or args.name:
        from recon.core.errors import ReconError

        raise ReconError("--all-users and --name list Slurm jobs: add --slurm")
    from recon.orchestration.cluster import jobs

    rows = jobs.list_jobs(_address(args))
    if args.json:
        print(json.dumps([_details(j) for j in rows], indent=2))
        return 0
    if not rows:
        print("no jobs")
        return 0
    print(f"{'ID':<32} {'STATUS':<10} {'STARTED':<19}  ENTRYPOINT")
    for j in rows:
        print(f"{(j.submission_id or j.job_id or '-'):<32} {str(j.status.value):<10} "
              f"{_when(j.start_time):<19}  {j.entrypoint}")
    return 0


def _details(j) -> dict:
    return {"id": j.submission_id or j.job_id, "status": str(j.status.value), "message": j.message,
            "entrypoint": j.entrypoint, "start_time": j.start_time, "end_time": j.end_time,
            "driver_node_id": getattr(j, "driver_node_id", None)}


def _status(args: argparse.Namespace) -> int:
    if backend(args) == "slurm":
        from recon.orchestration.cluster import slurm

        job = slurm.status(args.job_id)
        if args.json:
            print(json.dumps(dataclasses.asdict(job), indent=2))
        else:
            print(f"{job.job_id}  {job.state}  {job.reason if job.reason not in ('', 'None') else ''}".rstrip())
            print(f"  name {job.name or '-'}, nodes {job.nodes or '-'}, elapsed {job.elapsed or '-'}, "
                  f"exit code {job.exit_code or '-'}")
            if job.log:
                print(f"  log: {job.log}")
        return 0
    from recon.orchestration.cluster import jobs
    from recon.orchestration.cluster.job_outputs import closing_lines, repeat_closing_lines

    d = _details(jobs.info(args.job_id, _address(args)))
    ended = d["status"] in jobs.TERMINAL
    log = jobs.logs(args.job_id, _address(args)) if ended else ""
    if args.json:
        print(json.dumps({**d, "outputs": closing_lines(log)}, indent=2))
    else:
        print(f"{d['id']}  {d['status']}  {d['message'] or ''}".rstrip())
        print(f"  entrypoint: {d['entrypoint']}")
        print(f"  started {_when(d['start_time'])}, ended {_when(d['end_time'])}")
        repeat_closing_lines(log)
    return 0


def _logs(args: argparse.Namespace) -> int:
    if backend(args) == "slurm":
        from recon.orchestration.cluster import slurm

        if args.follow:
            return follow_slurm(args.job_id, args.log_dir)
        for chunk in slurm.logs(args.job_id, log_dir=args.log_dir):
            sys.stdout.write(chunk)
        return 0
    if args.log_dir:
        from recon.core.errors import ReconError

        raise ReconError("--log-dir is for Slurm jobs (a Ray Job's output comes from the cluster)")
    from recon.orchestration.cluster import jobs

    if args.follow:
        return follow_ray(args.job_id, _address(args))
    log = jobs.logs(args.job_id, _address(args))
    sys.stdout.write(log)
    if jobs.status(args.job_id, _address(args)) in jobs.TERMINAL:
        from recon.orchestration.cluster.job_outputs import repeat_closing_lines

        repeat_closing_lines(log)
    return 0


def _stop(args: argparse.Namespace) -> int:
    if backend(args) == "slurm":
        from recon.orchestration.cluster import slurm

        stopped = slurm.cancel(args.job_id)
        print(f"{args.job_id}: {'scancel sent' if stopped else 'not running'}")
        return 0
    from recon.orchestration.cluster import jobs

    stopped = jobs.stop(args.job_id, _address(args))
    print(f"{args.job_id}: {'stop requested' if stopped else 'not running'}")
    return 0
