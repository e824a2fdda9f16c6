"""``recon submit`` and ``recon jobs``: run recon commands on a Ray cluster as Ray Jobs.

    recon submit [--address http://HEAD:8265] [--storage s3://bucket/recon] \\
                 [--tracking-uri http://HEAD_PRIVATE_IP:5000] -- recon study run studies/paper.yaml
    recon jobs list
    recon jobs status ID
    recon jobs logs ID [--follow]
    recon jobs stop ID

The address is the cluster's dashboard (Jobs) URL; default ``$RAY_ADDRESS`` when it is http(s),
else http://127.0.0.1:8265 (what ``ray dashboard cluster.yaml`` forwards). Token-authenticated
clusters need ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` (or ``RAY_AUTH_TOKEN_PATH``) in the
submitting shell. See ``recon.orchestration.cluster.jobs`` for what is uploaded and passed to the job.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys

from recon.core.errors import ReconError


def register(subparsers: argparse._SubParsersAction) -> None:
    addr_help = ("Ray Jobs (dashboard) URL of the cluster (default: $RAY_ADDRESS if http(s), "
                 "else http://127.0.0.1:8265)")

    sub = subparsers.add_parser(
        "submit", help="run a command on a Ray cluster as a Ray Job (recon submit -- recon study run F)",
        description="Upload the project (without data, runs, MLflow stores, caches, weights) and run "
                    "the command after `--` on the cluster as a Ray Job. Nodes must have recon "
                    "installed; nothing is pip-installed for the job unless --pip is given.")
    sub.add_argument("--address", help=addr_help)
    sub.add_argument("--storage", help="RECON_STORAGE for the job: shared storage URI every node can "
                     "reach (s3://bucket/recon, gs://..., or an NFS path); default $RECON_STORAGE")
    sub.add_argument("--tracking-uri", help="MLFLOW_TRACKING_URI for the job (e.g. the head's "
                     "http://PRIVATE_IP:5000); default $MLFLOW_TRACKING_URI")
    sub.add_argument("--working-dir", default=".", help="directory uploaded as the job's working dir "
                     "(default: the current directory)")
    sub.add_argument("--no-working-dir", action="store_true", help="upload nothing")
    sub.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="extra environment variable for the job (repeatable)")
    sub.add_argument("--pip", action="append", default=[], metavar="REQ",
                     help="pip requirement installed into the job's runtime env (repeatable; "
                          "default none: nodes already have recon installed)")
    sub.add_argument("--submission-id", help="job id to use (default: generated)")
    sub.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the driver process")
    sub.add_argument("--entrypoint-num-gpus", type=float, help="GPUs reserved for the driver process")
    sub.add_argument("--entrypoint-resources", type=json.loads, metavar="JSON",
                     help='custom resources for the driver, e.g. \'{"recon_worker": 1}\' to run it on a worker')
    sub.add_argument("--follow", action="store_true", help="stream the logs until the job ends; exit "
                     "non-zero unless it SUCCEEDED")
    sub.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    sub.set_defaults(func=_submit)

    jobs = subparsers.add_parser("jobs", help="list / status / logs / stop Ray Jobs on a cluster")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)
    lst = jsub.add_parser("list", help="every job on the cluster, newest first")
    lst.add_argument("--address", help=addr_help)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)
    for name, helptext, fn in (("status", "status and message of one job", _status),
                               ("logs", "the job's output so far (--follow: stream until it ends)", _logs),
                               ("stop", "stop a running job", _stop)):
        p = jsub.add_parser(name, help=helptext)
        p.add_argument("job_id", metavar="ID", help="submission id (raysubmit_...)")
        p.add_argument("--address", help=addr_help)
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=fn)


def _address(args) -> str:
    from recon.orchestration.cluster.jobs import default_address

    return args.address or default_address()


def _submit(args: argparse.Namespace) -> int:
    from recon.orchestration.cluster import jobs

    entry = list(args.entrypoint)
    if entry and entry[0] == "--":
        entry = entry[1:]
    if not entry:
        raise ReconError("nothing to submit: give the command after `--`, "
                         "e.g. recon submit -- recon study run studies/paper.yaml")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReconError(f"--env wants KEY=VALUE, got {item!r}")
        env[key] = value
    address = _address(args)
    job_id = jobs.submit(entry, address=address, storage=args.storage, tracking_uri=args.tracking_uri,
                         working_dir=None if args.no_working_dir else args.working_dir, env=env,
                         pip=args.pip or None, submission_id=args.submission_id,
                         entrypoint_num_cpus=args.entrypoint_num_cpus,
                         entrypoint_num_gpus=args.entrypoint_num_gpus,
                         entrypoint_resources=args.entrypoint_resources)
    addr = "" if address == jobs.DEFAULT_DASHBOARD and not args.address else f" --address {shlex.quote(address)}"
    print(f"submitted {job_id}: {shlex.join(entry)}")
    print(f"  follow:  recon jobs logs {job_id} --follow{addr}")
    print(f"  status:  recon jobs status {job_id}{addr}")
    print(f"  stop:    recon jobs stop {job_id}{addr}")
    sys.stdout.flush()
    if args.follow:
        return _follow(job_id, address)
    return 0


def _follow(job_id: str, address: str) -> int:
    from recon.orchestration.cluster import jobs

    for chunk in jobs.follow_logs(job_id, address):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    final = jobs.wait(job_id, address, timeout_s=60)
    print(f"job {job_id} {final}")
    return 0 if final == "SUCCEEDED" else 1


def _when(ms) -> str:
    if not ms:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _list(args: argparse.Namespace) -> int:
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
    from recon.orchestration.cluster import jobs

    d = _details(jobs.info(args.job_id, _address(args)))
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(f"{d['id']}  {d['status']}  {d['message'] or ''}".rstrip())
        print(f"  entrypoint: {d['entrypoint']}")
        print(f"  started {_when(d['start_time'])}, ended {_when(d['end_time'])}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from recon.orchestration.cluster import jobs

    if args.follow:
        return _follow(args.job_id, _address(args))
    sys.stdout.write(jobs.logs(args.job_id, _address(args)))
    return 0


def _stop(args: argparse.Namespace) -> int:
    from recon.orchestration.cluster import jobs

    stopped = jobs.stop(args.job_id, _address(args))
    print(f"{args.job_id}: {'stop requested' if stopped else 'not running'}")
    return 0
