"""``recon submit``: run a recon command where the cluster is -- a running Ray cluster (Ray Jobs), a Slurm
allocation (``--slurm``) or a Kubernetes cluster through KubeRay (``--k8s``).

    recon submit [--address http://HEAD:8265] -- recon study run studies/paper.yaml          # Ray Jobs
    recon submit --slurm --slurm-nodes 4 --slurm-gpus-per-node 2 --slurm-partition gpu \\
                 --slurm-mlflow-server --storage /shared/recon -- recon study run studies/paper.yaml
    recon submit --k8s --k8s-image ghcr.io/me/recon:0.1 --storage s3://bucket/recon --dry-run \\
                 -- recon study run studies/paper.yaml                                      # print the RayJob

One command with the launcher as a flag, rather than a command group per launcher, because the user's
question is the same everywhere ("run this command there") and so are its common flags (``--storage``,
``--tracking-uri``, ``--env``, ``--working-dir``, ``--follow``, ``--dry-run``); ``recon jobs`` then follows
the job whatever ran it. Each launcher's own flags are generated from its settings class with a prefix
(``--slurm-*`` from :class:`~recon.orchestration.cluster.slurm_settings.SlurmSettings`, ``--k8s-*`` from
:class:`~recon.orchestration.cluster.kuberay.KubeRaySettings`), so a flag cannot disagree with the
settings the launcher validates; ``--help`` lists them in a group per launcher. A flag of a launcher that
was not chosen is refused rather than ignored.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from recon.core.errors import ReconError
from recon.orchestration.cli.flags import add_config_arguments, config_from_args, given

#: Settings fields the common flags set (``--storage``, ``--tracking-uri``, ``--env``, ``--working-dir``).
SLURM_COMMON = ("storage", "tracking_uri", "env", "workdir")
K8S_COMMON = ("storage", "tracking_uri", "command")
#: Flags only Ray Jobs use, with the value that means "not given".
RAY_ONLY = {"address": None, "no_working_dir": False, "pip": [], "submission_id": None,
            "entrypoint_num_cpus": None, "entrypoint_num_gpus": None, "entrypoint_resources": None}

def register(subparsers: argparse._SubParsersAction) -> None:
    from recon.orchestration.cluster.kuberay import KubeRaySettings
    from recon.orchestration.cluster.slurm_settings import SlurmSettings

    sub = subparsers.add_parser(
        "submit", help="run a command on a cluster: a Ray cluster (Ray Jobs), Slurm (--slurm) or Kubernetes (--k8s)",
        description="Run the command after `--` on a cluster. Without --slurm / --k8s: as a Ray Job on a running "
                    "Ray cluster (the project is uploaded without data, runs, MLflow stores, caches and weights; "
                    "nodes must have recon installed). --slurm: an sbatch script that starts Ray inside the "
                    "allocation and runs the command on its head node. --k8s: a KubeRay RayJob.")
    where = sub.add_mutually_exclusive_group()
    where.add_argument("--slurm", action="store_true", help="submit to Slurm (sbatch); see the --slurm-* flags")
    where.add_argument("--k8s", action="store_true", help="submit to Kubernetes as a KubeRay RayJob (kubectl); "
                                                          "see the --k8s-* flags")
    common = sub.add_argument_group("every launcher")
    common.add_argument("--storage", help="RECON_STORAGE for the job: storage every node reaches (an NFS path, "
                                          "s3://bucket/recon, gs://...); default: $RECON_STORAGE (Ray Jobs), the "
                                          "study's own (Slurm), the k8s placeholder to change (--k8s)")
    common.add_argument("--tracking-uri", help="MLFLOW_TRACKING_URI for the job (an MLflow server such as "
                                               "http://HEAD_PRIVATE_IP:5000); default: $MLFLOW_TRACKING_URI (Ray "
                                               "Jobs), the study's own store or --slurm-mlflow-server (Slurm), "
                                               "http://mlflow:5000 (--k8s)")
    common.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment variable for the job (repeatable; Ray Jobs and Slurm)")
    common.add_argument("--working-dir", help="the project directory: uploaded with a Ray Job (default: the "
                                              "current directory), the job's directory on Slurm (default: the "
                                              "current directory), uploaded with kubectl ray job submit with "
                                              "--k8s (default: none, the image holds the code)")
    common.add_argument("--dry-run", action="store_true", help="print what would be submitted (the sbatch "
                                                               "script, the RayJob and its kubectl command) and "
                                                               "submit nothing (--slurm, --k8s)")
    common.add_argument("--follow", action="store_true", help="stream the job's output until it ends; exit "
                                                              "non-zero unless it succeeded (Ray Jobs, Slurm)")
    ray = sub.add_argument_group("Ray Jobs (a running Ray cluster)")
    ray.add_argument("--address", help="Ray Jobs (dashboard) URL of the cluster (default: $RAY_ADDRESS if "
                                       "http(s), else http://127.0.0.1:8265)")
    ray.add_argument("--no-working-dir", action="store_true", help="upload nothing")
    ray.add_argument("--pip", action="append", default=[], metavar="REQ",
                     help="pip requirement installed into the job's runtime env (repeatable; default none: "
                          "nodes already have recon installed)")
    ray.add_argument("--submission-id", help="job id to use (default: generated)")
    ray.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the driver process")
    ray.add_argument("--entrypoint-num-gpus", type=float, help="GPUs reserved for the driver process")
    ray.add_argument("--entrypoint-resources", type=json.loads, metavar="JSON",
                     help='custom resources for the driver, e.g. \'{"recon_worker": 1}\' to run it on a worker')
    launcher_flags = {
        "slurm": add_config_arguments(sub.add_argument_group("Slurm (--slurm)"), SlurmSettings, prefix="slurm-",
                                      skip=SLURM_COMMON),
        "k8s": add_config_arguments(sub.add_argument_group("Kubernetes / KubeRay (--k8s)"), KubeRaySettings,
                                    prefix="k8s-", skip=K8S_COMMON)}
    sub.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    sub.set_defaults(func=_submit, launcher_flags=launcher_flags)


# ---------------------------------------------------------------- dispatch

def _entrypoint(args: argparse.Namespace) -> list[str]:
    entry = list(args.entrypoint)
    if entry and entry[0] == "--":
        entry = entry[1:]
    if not entry:
        raise ReconError("nothing to submit: give the command after `--`, "
                         "e.g. recon submit -- recon study run studies/paper.yaml")
    return entry


# The recon commands whose first argument after the verb is a file the job reads: checked before submitting, so a
# wrong path fails here within seconds rather than in the job after it waited in a queue.
FILE_COMMANDS = {("study", "run"), ("study", "resume"), ("study", "plan"), ("study", "tables"),
                 ("sweep", "run"), ("sweep", "resume"), ("sweep", "plan")}


def check_command_file(entry: list[str], base: Path, where: str) -> None:
    """A ``recon study|sweep VERB FILE`` command whose FILE is not in ``base`` (where the job runs) is refused."""
    words = [w for w in entry if not w.startswith("-")]
    if len(words) < 4 or Path(words[0]).name != "recon" or tuple(words[1:3]) not in FILE_COMMANDS:
        return
    file = Path(words[3]).expanduser()
    path = file if file.is_absolute() else base / file
    if not path.is_file():
        raise ReconError(f"{shlex.join(entry)}: {words[3]} is not a file in {where} ({path}): the job would fail "
                         "after it is scheduled; give the path of the study or sweep file as the job will see it")


def _env(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReconError(f"--env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def _refuse_others(args: argparse.Namespace, launcher: str) -> None:
    """A flag that belongs to a launcher other than ``launcher`` is an error, never silently ignored."""
    wrong = []
    for name, flags in args.launcher_flags.items():
        if name != launcher:
            wrong += [flags[dotted] for dotted in given(args, flags)]
    if launcher != "ray":
        wrong += ["--" + name.replace("_", "-") for name, unset in RAY_ONLY.items() if getattr(args, name) != unset]
    if wrong:
        where = {"ray": "a Ray Job (no --slurm / --k8s)", "slurm": "--slurm", "k8s": "--k8s"}[launcher]
        raise ReconError(f"{', '.join(sorted(wrong))}: not used by {where}; drop them or choose the launcher they "
                         f"belong to (recon submit --help lists each launcher's flags)")


def _submit(args: argparse.Namespace) -> int:
    launcher = "slurm" if args.slurm else "k8s" if args.k8s else "ray"
    _refuse_others(args, launcher)
    entry = _entrypoint(args)
    if launcher == "slurm":
        return _submit_slurm(args, entry)
    if launcher == "k8s":
        return _submit_k8s(args, entry)
    return _submit_ray(args, entry)


# ---------------------------------------------------------------- Ray Jobs

def _submit_ray(args: argparse.Namespace, entry: list[str]) -> int:
    from recon.orchestration.cli.commands.jobs import follow_ray
    from recon.orchestration.cluster import jobs

    if args.dry_run:
        raise ReconError("--dry-run prints an sbatch script (--slurm) or a RayJob (--k8s); a Ray Job is submitted "
                         "as it is: `recon submit -- COMMAND` without --dry-run")
    if not args.no_working_dir:
        base = Path(args.working_dir or ".").resolve()
        check_command_file(entry, base, "the working directory uploaded with the job")
    address = args.address or jobs.default_address()
    job_id = jobs.submit(entry, address=address, storage=args.storage, tracking_uri=args.tracking_uri,
                         working_dir=None if args.no_working_dir else (args.working_dir or "."), env=_env(args),
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
    return follow_ray(job_id, address) if args.follow else 0


# ---------------------------------------------------------------- Slurm

def slurm_settings(args: argparse.Namespace):
    """:class:`SlurmSettings` from the ``--slurm-*`` flags and the common ones."""
    from recon.orchestration.cluster.slurm_settings import SlurmSettings

    fixed = {"env": _env(args)}
    for name, value in (("storage", args.storage), ("tracking_uri", args.tracking_uri),
                        ("workdir", args.working_dir)):
        if value is not None:
            fixed[name] = value
    return config_from_args(SlurmSettings, args, args.launcher_flags["slurm"], **fixed)


def _submit_slurm(args: argparse.Namespace, entry: list[str]) -> int:
    from recon.orchestration.cli.commands.jobs import follow_slurm
    from recon.orchestration.cluster import slurm
    from recon.orchestration.cluster.slurm_script import render_sbatch

    settings = slurm_settings(args)
    check_command_file(entry, settings.resolved_workdir(), "the job's working directory")
    if args.dry_run:
        sys.stdout.write(render_sbatch(settings, entry))
        print(f"# (dry run: nothing written or submitted; `recon submit --slurm ...` without --dry-run writes this "
              f"script to {settings.resolved_script_dir()}/ and runs sbatch on it)")
        return 0
    job_id = slurm.submit(settings, entry)
    print(f"  recon:   recon jobs logs {job_id} --follow   recon jobs status {job_id}   recon jobs stop {job_id}")
    sys.stdout.flush()
    return follow_slurm(job_id, log_dir=settings.resolved_log_dir()) if args.follow else 0


# ---------------------------------------------------------------- Kubernetes

def k8s_settings(args: argparse.Namespace, entry: list[str]):
    """:class:`KubeRaySettings` from the ``--k8s-*`` flags, the common ones and the command."""
    from recon.orchestration.cluster.kuberay import KubeRaySettings

    fixed: dict = {"command": list(entry)}
    for name, value in (("storage", args.storage), ("tracking_uri", args.tracking_uri)):
        if value is not None:
            fixed[name] = value
    return config_from_args(KubeRaySettings, args, args.launcher_flags["k8s"], **fixed)


def _submit_k8s(args: argparse.Namespace, entry: list[str]) -> int:
    from recon.orchestration.cluster.kuberay import KubeRaySettings
    from recon.orchestration.cluster.kuberay_submit import submit

    if args.env:
        raise ReconError("--env: a RayJob's pods take their environment from the manifest; put the variables in "
                         "the image, or edit the printed manifest (--dry-run) and `kubectl apply` it")
    if args.follow:
        raise ReconError("--follow: kubectl follows a RayJob (the command is printed on submission); with "
                         "--working-dir, `kubectl ray job submit` streams the job's output anyway")
    settings = k8s_settings(args, entry)
    working_dir = Path(args.working_dir) if args.working_dir else None
    if working_dir is not None:  # without one, the command's files are in the image
        check_command_file(entry, working_dir.resolve(), "--working-dir")
    defaults = KubeRaySettings()
    still = [f"{flag} (still {value})" for flag, value, default in
             (("--k8s-image", settings.image, defaults.image), ("--storage", settings.storage, defaults.storage))
             if value == default]
    if args.dry_run:
        sys.stdout.write(submit(settings, dry_run=True, working_dir=working_dir).describe())
        if still:
            print(f"# note: {' and '.join(still)} are recon's placeholders: give your image and bucket before "
                  "submitting (a submission with them is refused)")
        return 0
    if still:
        raise ReconError(f"{' and '.join(still)}: recon's placeholders; give your image and bucket (look at the "
                         f"manifest first with --dry-run)")
    plan = submit(settings, dry_run=False, working_dir=working_dir)
    print(f"RayJob {settings.name} in namespace {settings.namespace}: `{shlex.join(plan.argv)}` exited with "
          f"{plan.returncode}")
    print(f"  follow:  {plan.follow_hint()}")
    return int(plan.returncode or 0)


__all__ = ["register", "slurm_settings", "k8s_settings"]
