"""Run a recon command on a Slurm allocation: an sbatch script that starts Ray inside the allocation,
runs the command on its head node against that Ray, and stops Ray when the command ends.

    from recon.orchestration.cluster import slurm

    settings = slurm.SlurmSettings(nodes=4, cpus_per_node=16, gpus_per_node=2, partition="gpu",
                                   time="12:00:00", storage="/shared/recon", tracking_uri="http://mlflow:5000",
                                   activate="source ~/venvs/recon/bin/activate")
    print(slurm.render_sbatch(settings, ["recon", "study", "run", "studies/paper.yaml"]))   # look first
    job_id = slurm.submit(settings, ["recon", "study", "run", "studies/paper.yaml"])      # sbatch it
    slurm.status(job_id)                  # SlurmJob(state="RUNNING", exit_code=..., log=...)
    for chunk in slurm.logs(job_id, follow=True): print(chunk, end="")   # until the job ends
    slurm.cancel(job_id)                  # scancel; True when it was still pending or running
    slurm.list_jobs()                     # this user's jobs, newest first
    slurm.wait(job_id, timeout_s=3600)    # poll until it ends

The CLI wiring (``recon submit --slurm ...`` and ``recon jobs list|status|logs|stop --slurm``) is meant to
call exactly these: ``SlurmSettings`` is a :class:`~recon.core.config.Config`, so
``add_config_arguments(parser, SlurmSettings, prefix="slurm-")`` gives one flag per field
(``--slurm-nodes``, ``--slurm-gpus-per-node``...) and ``config_from_args`` builds the settings.

Two ways to start Ray (``mode``):

* ``shared`` (default): ``ray start --head --block &`` in the batch script (the first node), one
  ``srun ... ray start --address HEAD --block &`` for the other nodes, then the command. Every Ray port
  comes from a block picked by the job id, the Ray temp dir is ``<ray_temp_root>/ray-<job id>``, and only
  this job's ``ray start`` processes are stopped at the end (SIGTERM; never ``ray stop``), so jobs of
  several users can share a node.
* ``symmetric``: Ray's own recipe (Ray >= 2.49): ``srun --nodes=N ray symmetric-run --address HEAD:PORT
  --min-nodes N ... -- COMMAND``. Fewer moving parts, but ``symmetric-run`` refuses a node where any Ray
  runs and ends with ``ray stop``, which stops every Ray of this user on the node: it wants whole nodes
  (``--exclusive`` is added unless ``exclusive=False``).

Either way the script exports ``RAY_AUTH_MODE=token`` and the token's *file* (``$RAY_AUTH_TOKEN_PATH``,
default ``~/.ray/auth_token``), never the token; ``RECON_STORAGE`` and ``MLFLOW_TRACKING_URI``; the
telemetry opt-outs recon gives every process (``tracking.OFFLINE_ENV``); and it passes ``--address``
(and ``--storage`` / ``--tracking-uri`` when set) to recon commands that take them, so the command
joins the allocation's Ray and uses the shared storage and MLflow store whatever its study file says.

Nothing here imports Ray or MLflow at module level: rendering and submitting need neither.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from recon.core.config import Config, ConfigError, knob
from recon.core.errors import ReconError

MODES = ("shared", "symmetric")

#: Slurm job states after which nothing of the job runs any more.
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT")

#: Highest port of a block: the Linux ephemeral range starts at 32768, where outgoing connections
#: take their local ports; Ray ports below it cannot be taken by a random client socket.
EPHEMERAL_START = 32768

#: Offsets of Ray's fixed ports within a job's block (shared mode); workers get the rest of the block.
PORT_OFFSETS = {"gcs": 0, "node-manager": 1, "object-manager": 2, "dashboard-agent-listen": 3,
                "dashboard-agent-grpc": 4, "runtime-env-agent": 5, "metrics-export": 6,
                "ray-client-server": 7, "dashboard": 8}
FIRST_WORKER_OFFSET = 10

#: Unix socket paths are limited to 107 bytes; Ray's deepest is
#: <root>/ray-<job id>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (about 80 bytes + root).
MAX_TEMP_ROOT = 24

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_NO_SPACE = re.compile(r"^\S+$")


class SlurmError(ReconError):
    """A Slurm command is missing or answered an error; the message says what to do."""


@dataclass
class SlurmSettings(Config):
    """Where and how a recon command runs on Slurm (see the module docstring)."""

    nodes: int = knob(1, "nodes to allocate (#SBATCH --nodes); one Ray node per Slurm node", ge=1)
    cpus_per_node: int = knob(4, "CPUs per node (#SBATCH --cpus-per-task, one task per node); Ray's --num-cpus", ge=1)
    gpus_per_node: int = knob(0, "GPUs per node (#SBATCH --gres=gpu:N); Ray's --num-gpus", ge=0)
    mem: Optional[str] = knob(None, "memory per node (#SBATCH --mem, e.g. 64G; default: the partition's)")
    partition: Optional[str] = knob(None, "partition (#SBATCH --partition; default: the cluster's default)")
    account: Optional[str] = knob(None, "account charged (#SBATCH --account; default: yours)")
    time: Optional[str] = knob(None, "time limit (#SBATCH --time, e.g. 12:00:00 or 2-00:00:00; default: the partition's)")
    job_name: str = knob("recon", "job name (#SBATCH --job-name); also names the script and log files")
    mode: str = knob("shared", "how Ray starts: 'shared' (ray start --head/--block + srun workers, ports from the "
                     "job id: nodes may be shared) or 'symmetric' (Ray's `ray symmetric-run` recipe: whole nodes)",
                     choices=MODES)
    exclusive: Optional[bool] = knob(None, "ask for whole nodes (#SBATCH --exclusive; default: yes in symmetric "
                                     "mode, no in shared mode)")
    storage: Optional[str] = knob(None, "RECON_STORAGE: storage every node can reach (a shared path, s3://, gs://); "
                                  "default: the study's own setting")
    tracking_uri: Optional[str] = knob(None, "MLflow tracking URI of the job (an MLflow server, or sqlite:/// on a "
                                       "shared disk); default: the study's own store")
    workdir: Optional[str] = knob(None, "the job's working directory (#SBATCH --chdir; default: the current directory)")
    script_dir: str = knob("runs/slurm", "folder of the sbatch scripts that submit writes (relative to workdir)")
    log_dir: Optional[str] = knob(None, "folder of the jobs' output files, <job name>-<job id>.out, on a disk both the "
                                  "nodes and you can read (#SBATCH --output; default: script_dir)")
    sbatch_lines: list[str] = knob(factory=list, help="extra #SBATCH options, one per item (e.g. --qos=high, "
                                                      "--constraint=a100)")
    activate: Optional[str] = knob(None, "shell line that puts the recon environment (recon, ray, python) on PATH on "
                                   "every node, e.g. 'source ~/venvs/recon/bin/activate' or 'module load recon' "
                                   "(default: the PATH sbatch passes on)")
    python: str = knob("python", "the recon environment's Python (after activate); runs the wait for Ray's nodes")
    env: dict[str, str] = knob(factory=dict, help="extra environment variables for the job, e.g. "
                                                  "{\"RECON_DATA_DIR\": \"/shared/data\"}; never secrets (refused)")
    ray_args: list[str] = knob(factory=list, help="extra `ray start` options for every node (e.g. "
                                                  "--object-store-memory=8000000000)")
    ray_temp_root: str = knob("/tmp", f"folder of each job's Ray temp dir ray-<job id> (at most {MAX_TEMP_ROOT} "
                              "characters: Ray's socket paths are limited)")
    port: int = knob(6379, "symmetric mode: the head's Ray (GCS) port", ge=1, le=65535)
    port_base: int = knob(20000, "shared mode: first port of the blocks a job's Ray ports are taken from (the block "
                          "is picked by the job id)", ge=1024, le=65535)
    ports_per_job: int = knob(200, f"shared mode: ports per block ({FIRST_WORKER_OFFSET} for Ray's services, the rest "
                              "for its worker processes: at least one per CPU)", ge=FIRST_WORKER_OFFSET + 10)
    node_wait_s: int = knob(300, "seconds to wait for every node to join Ray before the job fails", ge=1)
    dashboard: bool = knob(False, "shared mode: start Ray's dashboard on the head (127.0.0.1, a port of the block)")

    def check(self) -> None:
        super().check()
        if not _SAFE_NAME.match(self.job_name):
            raise ConfigError("job_name", f"letters, digits, '.', '_' and '-' only (it names files), got {self.job_name!r}")
        for name in ("mem", "partition", "account", "time", "workdir", "script_dir", "log_dir", "ray_temp_root"):
            value = getattr(self, name)
            if value is not None and not _NO_SPACE.match(value):
                raise ConfigError(name, f"no spaces or line breaks (it goes on an #SBATCH line or into a path Ray "
                                        f"uses), got {value!r}")
        for line in self.sbatch_lines:
            if "\n" in line or "\r" in line or not line.strip():
                raise ConfigError("sbatch_lines", f"one #SBATCH option per item, got {line!r}")
        if self.activate is not None and ("\n" in self.activate or "\r" in self.activate):
            raise ConfigError("activate", "one shell line (join several with ' && ')")
        if len(self.ray_temp_root) > MAX_TEMP_ROOT:
            raise ConfigError("ray_temp_root", f"at most {MAX_TEMP_ROOT} characters (Ray's Unix socket paths under "
                                               f"it are limited to 107 bytes), got {self.ray_temp_root!r}")
        if self.port_base + self.ports_per_job > EPHEMERAL_START:
            raise ConfigError("port_base", f"port_base + ports_per_job must stay below {EPHEMERAL_START} (the "
                                           f"ephemeral ports clients take), got {self.port_base}+{self.ports_per_job}")
        for key in self.env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ConfigError("env", f"not an environment variable name: {key!r}")

    # -- derived values ---------------------------------------------------------------------------
    @property
    def whole_nodes(self) -> bool:
        """--exclusive: asked for, or symmetric mode's default (its `ray stop` takes the node's Ray down)."""
        return self.exclusive if self.exclusive is not None else self.mode == "symmetric"

    @property
    def port_slots(self) -> int:
        """How many port blocks fit between port_base and the ephemeral range (jobs are spread over them)."""
        return (EPHEMERAL_START - self.port_base) // self.ports_per_job

    def resolved_workdir(self) -> Path:
        return Path(self.workdir or os.getcwd()).expanduser().resolve()

    def resolved_script_dir(self) -> Path:
        return (self.resolved_workdir() / Path(self.script_dir).expanduser()).resolve()

    def resolved_log_dir(self) -> Path:
        return (self.resolved_workdir() / Path(self.log_dir or self.script_dir).expanduser()).resolve()

    def log_path(self, job_id: str) -> Path:
        """Where the job's output goes (the script's ``#SBATCH --output`` with %x and %j filled in)."""
        return self.resolved_log_dir() / f"{self.job_name}-{job_id}.out"


# ================================================================ the script

def render_sbatch(settings: SlurmSettings, command: list[str]) -> str:
    """The sbatch script that runs ``command`` on the head node of a Ray cluster made of the allocation.

    Readable on purpose (a user may keep it and ``sbatch`` it again): every value is quoted with
    :func:`shlex.quote`, each step has a comment saying why, and it holds no secret.
    """
    command = list(command)
    if not command:
        raise ReconError("nothing to run: give the command, e.g. ['recon', 'study', 'run', 'studies/paper.yaml']")
    settings.check()
    workdir = settings.resolved_workdir()
    storage = _absolute_storage(settings.storage, workdir)
    tracking = _absolute_tracking(settings.tracking_uri, workdir)
    parts = [_header(settings, command, workdir), _environment(settings, storage, tracking), _head_address(settings),
             _shared_ray(settings) if settings.mode == "shared" else _symmetric_ray(settings),
             _run(settings, _command_line(settings, command, storage, tracking))]
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


def _header(s: SlurmSettings, command: Sequence[str], workdir: Path) -> str:
    shown = shlex.join(command).replace("\n", "\\n").replace("\r", "\\r")
    lines = ["#!/bin/bash",
             f"# recon on Slurm ({s.mode} mode): Ray on the {s.nodes} node(s) of this allocation, then, on its head "
             "node:",
             f"#   {shown}",
             "# Written by recon.orchestration.cluster.slurm; run it again with `sbatch THIS_FILE`. It holds no secret:",
             "# the Ray token is read on the nodes from $RAY_AUTH_TOKEN or the file $RAY_AUTH_TOKEN_PATH "
             "(default ~/.ray/auth_token).",
             f"#SBATCH --job-name={s.job_name}",
             f"#SBATCH --nodes={s.nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --cpus-per-task={s.cpus_per_node}"]
    if s.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{s.gpus_per_node}")
    for flag, value in (("mem", s.mem), ("partition", s.partition), ("account", s.account), ("time", s.time)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    if s.whole_nodes:
        lines.append("#SBATCH --exclusive")
    lines += [f"#SBATCH --chdir={workdir}",
              f"#SBATCH --output={s.resolved_log_dir()}/%x-%j.out"]
    lines += [line if line.lstrip().startswith("#SBATCH") else f"#SBATCH {line.strip()}" for line in s.sbatch_lines]
    lines.append("set -euo pipefail")
    return "\n".join(lines)


def _environment(s: SlurmSettings, storage: Optional[str], tracking: Optional[str]) -> str:
    from recon.core.privacy import OFFLINE_ENV, SECRET_NAME

    lines = ["# ---- environment of this script and of every srun step (they inherit it)"]
    if s.activate:  # activate scripts often read unset variables: not under `set -u`
        lines += ["set +u", s.activate, "set -u"]
    lines += ["# Token auth for every Ray process and client: the token stays in its file (or in the environment",
              "# sbatch passed on), never in this script.",
              "export RAY_AUTH_MODE=token",
              'export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"',
              'if [[ -z "${RAY_AUTH_TOKEN:-}" && ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then',
              '  echo "recon: no Ray token: $RAY_AUTH_TOKEN_PATH is missing or empty and RAY_AUTH_TOKEN is not set;'
              ' run \'ray get-auth-token --generate\' once on a machine whose home the nodes share, or point'
              ' RAY_AUTH_TOKEN_PATH at the token file" >&2',
              "  exit 2",
              "fi"]
    if storage:
        lines.append(f"export RECON_STORAGE={shlex.quote(storage)}")
    if tracking:
        lines.append(f"export MLFLOW_TRACKING_URI={shlex.quote(tracking)}")
    lines.append("# Nothing leaves the cluster: Ray's usage stats, MLflow's and the Hub's telemetry off (a value you "
                 "set wins).")
    for name, value in OFFLINE_ENV.items():
        lines.append(f'export {name}="${{{name}:-{value}}}"')
    for name, value in s.env.items():
        if SECRET_NAME.search(name):
            raise ReconError(f"env: {name} looks like a secret and would be written into the sbatch script, which "
                             f"anyone who can read the script folder can read; export it in the shell you submit "
                             f"from (sbatch passes your environment on) or keep it in a file")
        lines.append(f"export {name}={shlex.quote(value)}")
    return "\n".join(lines)


def _head_address(s: SlurmSettings) -> str:
    return "\n".join([
        "# ---- the head node: the allocation's first (`scontrol show hostnames | head -n 1`; awk reads all of its",
        "# input, so pipefail never sees a SIGPIPE), at the IPv4 address Slurm reaches it by (its NodeAddr):",
        "# Ray's nodes connect to it and `ray symmetric-run` compares it with each node's own addresses.",
        "head_node=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | awk 'NR == 1')",
        "head_addr=$(scontrol show node \"$head_node\" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p' || true)",
        "head_ip=$(getent ahostsv4 \"${head_addr:-$head_node}\" | awk 'NR == 1 {print $1}' || true)",
        'if [[ -z "$head_ip" ]]; then',
        '  echo "recon: cannot resolve the head node $head_node (NodeAddr ${head_addr:-unknown}) to an IPv4'
        ' address" >&2',
        "  exit 2",
        "fi",
        f'ray_tmp={shlex.quote(s.ray_temp_root.rstrip("/") or "/")}/ray-"$SLURM_JOB_ID"   # this job\'s Ray sessions, '
        'logs and sockets'])


def _resources(s: SlurmSettings) -> list[str]:
    """``ray start`` options that say what one node has: the allocation's CPUs and GPUs, this job's temp dir."""
    out = [f"--num-cpus={s.cpus_per_node}", f"--num-gpus={s.gpus_per_node}", '--temp-dir="$ray_tmp"']
    return out + [shlex.quote(a) for a in s.ray_args]


def _srun(s: SlurmSettings, n: int, *extra: str) -> str:
    """An srun step of one task per node on ``n`` nodes, each with the node's CPUs (and GPUs)."""
    args = [f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1", f"--cpus-per-task={s.cpus_per_node}"]
    if s.gpus_per_node:
        args.append(f"--gres=gpu:{s.gpus_per_node}")
    return "srun " + " ".join(args + list(extra))


def _shared_ray(s: SlurmSettings) -> str:
    port = {name: f"$((port_block + {offset}))" for name, offset in PORT_OFFSETS.items()}
    node_ports = [f"--{name}-port={port[name]}" for name in
                  ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc",
                   "runtime-env-agent", "metrics-export")]
    node_ports += [f"--min-worker-port=$((port_block + {FIRST_WORKER_OFFSET}))",
                   f"--max-worker-port=$((port_block + {s.ports_per_job - 1}))"]
    head = ["ray start --head --block", '--node-ip-address="$head_ip"', '--port="$gcs_port"',
            f"--ray-client-server-port={port['ray-client-server']}",
            f"--include-dashboard={'true' if s.dashboard else 'false'}", f"--dashboard-port={port['dashboard']}",
            *_resources(s), '"${node_ports[@]}"']
    lines = [
        "# ---- Ray ports: one block of this job's, picked by its job id, so that Ray clusters of several jobs on one",
        f"# node (yours or other users') do not collide: {s.port_slots} blocks of {s.ports_per_job} ports from "
        f"{s.port_base}, below the",
        "# ephemeral range; every node of this job uses the same block.",
        f"port_block=$(( {s.port_base} + SLURM_JOB_ID % {s.port_slots} * {s.ports_per_job} ))",
        "gcs_port=$port_block",
        "node_ports=(",
        *[f"  {p}" for p in node_ports],
        ")",
        "",
        "# ---- on any exit (the command's end, an error, scancel's SIGTERM) stop this job's Ray, and only it: each",
        "# `ray start --block` stops the processes it started when it gets SIGTERM (srun passes the signal on to",
        "# its tasks). Never `ray stop`: it would stop every Ray of this user on the node, other jobs' included.",
        "ray_pids=()",
        "stop_ray() {",
        '  if (( ${#ray_pids[@]} )); then',
        '    kill -TERM "${ray_pids[@]}" 2>/dev/null || true',
        '    wait "${ray_pids[@]}" 2>/dev/null || true',
        "  fi",
        "}",
        "trap stop_ray EXIT",
        "trap 'exit 143' TERM INT",
        "",
        'echo "recon: job $SLURM_JOB_ID, nodes $SLURM_JOB_NODELIST; Ray head $head_node at $head_ip:$gcs_port, '
        'temp dir $ray_tmp"',
        "# The head runs here, in the batch step on the first node.",
        _continued(head) + " &",
        "ray_pids+=($!)",
        "head_pid=$!",
    ]
    if s.nodes > 1:
        worker = ['ray start --block', '--address="$head_ip:$gcs_port"', *_resources(s), '"${node_ports[@]}"']
        lines += ["# One Ray worker node on each other node of the allocation (one srun step, one task per node).",
                  _continued([_srun(s, s.nodes - 1, '--exclude="$head_node"'), *worker]) + " &",
                  "ray_pids+=($!)"]
    lines += ["# Wait until all nodes have joined (fails early if the head died; its output is above).",
              _continued([f"{shlex.quote(s.python)} -m recon.orchestration.cluster.slurm wait-for-nodes",
                          '--address "$head_ip:$gcs_port"', f"--nodes {s.nodes}", f"--timeout-s {s.node_wait_s}",
                          '--pid "$head_pid"']),
              'export RAY_ADDRESS="$head_ip:$gcs_port"   # any Ray client of the command joins this cluster']
    return "\n".join(lines)


def _symmetric_ray(s: SlurmSettings) -> str:
    return "\n".join([
        "# ---- Ray's own recipe: `ray symmetric-run` on every node; on the head it starts Ray, waits for all nodes,",
        "# runs the command, then `ray stop`s the node; on the others it runs `ray start --block` until the head",
        "# goes. It refuses a node where a Ray already runs, and its `ray stop` stops every Ray of this user there:",
        "# give the job whole nodes (#SBATCH --exclusive).",
        f"gcs_port={s.port}",
        f"export RAY_SYMMETRIC_RUN_CLUSTER_WAIT_TIMEOUT={s.node_wait_s}   # how long the head waits for the nodes",
        'export RAY_ADDRESS="$head_ip:$gcs_port"   # any Ray client of the command joins this cluster',
        'echo "recon: job $SLURM_JOB_ID, nodes $SLURM_JOB_NODELIST; Ray head $head_node at $RAY_ADDRESS, '
        'temp dir $ray_tmp"'])


def _run(s: SlurmSettings, command_line: str) -> str:
    if s.mode == "shared":
        lines = ["# ---- the command, here on the head node, against this allocation's Ray",
                 "rc=0",
                 command_line + " || rc=$?"]
    else:
        symmetric = [_srun(s, s.nodes), "ray symmetric-run", '--address "$RAY_ADDRESS"', f"--min-nodes {s.nodes}",
                     *_resources(s), "--"]
        lines = ["# ---- Ray on every node, and the command on the head node against it",
                 "rc=0",
                 _continued(symmetric) + " \\\n  " + command_line + " || rc=$?"]
    lines += ['echo "recon: the command exited with status $rc"', 'exit "$rc"']
    return "\n".join(lines)


def _continued(parts: Sequence[str]) -> str:
    """One shell command over several lines: the first part, then each option on its own indented line."""
    return " \\\n  ".join(parts)


# ---------------------------------------------------------------- the command's flags

#: Flags recon gives a command (when its subcommand takes them and it does not name them itself).
_ADDRESS, _STORAGE, _TRACKING = "--address", "--storage", "--tracking-uri"


def _given(command: Sequence[str], flag: str) -> Optional[str]:
    """The value ``command`` gives ``flag`` (``--flag V`` or ``--flag=V``), None when it does not name it."""
    for i, arg in enumerate(command):
        if arg == flag:
            return command[i + 1] if i + 1 < len(command) else ""
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def _command_line(s: SlurmSettings, command: Sequence[str], storage: Optional[str], tracking: Optional[str]) -> str:
    """``command`` quoted for bash. It reaches the allocation's Ray, the storage and the tracking server
    through the environment the script exports (``RAY_ADDRESS``, ``RECON_STORAGE``, ``MLFLOW_TRACKING_URI``),
    which every recon command reads, so nothing is added to it. A command that names another ``--address``
    would leave the allocation idle, and one giving a ``--storage`` / ``--tracking-uri`` other than the
    settings' would split the study's records: both are refused.
    """
    if _given(command, _ADDRESS) is not None:
        raise ReconError(f"the command names {_ADDRESS} {_given(command, _ADDRESS)!r}, but on Slurm it runs against "
                         f"the Ray cluster the job starts in its allocation: drop {_ADDRESS} from the command")
    for flag, value in ((_STORAGE, storage), (_TRACKING, tracking)):
        given = _given(command, flag)
        if value and given is not None and given != value:
            raise ReconError(f"the command gives {flag} {given!r} but the Slurm settings say {value!r}: keep one")
    return shlex.join(command)


def _absolute_storage(storage: Optional[str], workdir: Path) -> Optional[str]:
    """A relative storage path made absolute against the job's working directory (URIs kept as they are)."""
    if not storage or "://" in storage:
        return storage
    return str((workdir / Path(storage).expanduser()).resolve())


def _absolute_tracking(uri: Optional[str], workdir: Path) -> Optional[str]:
    """A relative ``sqlite:///`` (or plain-folder) tracking URI made absolute against the working directory."""
    from recon.orchestration.tracking.uri import sqlite_path, sqlite_uri

    if not uri:
        return uri
    path = sqlite_path(uri)
    if path is not None:
        return uri if path.is_absolute() else sqlite_uri(workdir / path)
    if "://" not in uri:
        return str((workdir / Path(uri).expanduser()).resolve())
    return uri


# ================================================================ Slurm's commands

def _require(tool: str) -> str:
    """The path of a Slurm client command; a :class:`SlurmError` saying where recon must run when it is missing."""
    exe = shutil.which(tool)
    if exe is None:
        raise SlurmError(f"`{tool}` is not on PATH: recon's Slurm launcher runs where the Slurm client commands "
                         f"work (a login node of the cluster, or a machine with the slurm-client package and the "
                         f"cluster's slurm.conf); load the cluster's Slurm module or install slurm-client, then "
                         f"check that `sinfo` answers")
    return exe


def _slurm(tool: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a Slurm client command; a missing command or an error becomes a :class:`SlurmError`."""
    exe = _require(tool)
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"`{tool} {shlex.join(args)}` did not answer in {timeout:.0f}s: is slurmctld reachable "
                         f"(`sinfo`)?") from exc
    if check and done.returncode != 0:
        raise SlurmError(f"Slurm refused `{tool} {shlex.join(args)}` (exit {done.returncode}): "
                         f"{_first_lines(done.stderr or done.stdout)}")
    return done


def _first_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return " / ".join(lines[:n]) or "(no message)"


def submit(settings: SlurmSettings, command: list[str], *, say: Callable[[str], None] = print) -> str:
    """Write the script to ``<script_dir>/<job name>-<timestamp>.sbatch``, ``sbatch`` it; returns the job id.

    The script stays where it is written, to read and to submit again; ``say`` gets the id, the script and
    log paths, and how to follow the job and browse its runs in MLflow.
    """
    script = render_sbatch(settings, command)
    _require("sbatch")
    folder = settings.resolved_script_dir()
    folder.mkdir(parents=True, exist_ok=True)
    settings.resolved_log_dir().mkdir(parents=True, exist_ok=True)
    path = _new_script_path(folder, settings.job_name)
    path.write_text(script)
    path.chmod(0o750)
    done = _slurm("sbatch", "--parsable", str(path), check=False)
    if done.returncode != 0:
        raise SlurmError(f"sbatch refused the job (exit {done.returncode}): {_first_lines(done.stderr or done.stdout)}"
                         f" -- the script is kept at {path}; change the settings (partition, account, time, "
                         f"resources) or edit it and run `sbatch {path}` yourself")
    job_id = done.stdout.strip().split(";")[0]  # --parsable: "<id>[;<cluster>]"
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {done.stdout.strip()!r} instead of a job id (script: {path})")
    log = settings.log_path(job_id)
    say(f"submitted Slurm job {job_id}: {shlex.join(command)}")
    say(f"  script:  {path}   (submit again: sbatch {shlex.quote(str(path))})")
    say(f"  log:     {log}")
    say(f"  follow:  tail -F {shlex.quote(str(log))}   status: squeue -j {job_id}   cancel: scancel {job_id}")
    browse = browse_hint(command, settings)
    if browse:
        say(f"  MLflow:  {browse}")
    return job_id


def _new_script_path(folder: Path, job_name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = folder / f"{job_name}-{stamp}.sbatch", 1
    while path.exists():  # two submissions within a second
        n += 1
        path = folder / f"{job_name}-{stamp}-{n}.sbatch"
    return path


def browse_hint(command: Sequence[str], settings: SlurmSettings) -> Optional[str]:
    """How to look at the runs: the tracking server's URL, else the ``recon ui`` command for the study's store
    (``recon ui FILE``, with ``--tracking-uri`` when the settings name the store), else None."""
    from recon.orchestration.tracking.uri import is_remote

    tracking = _absolute_tracking(settings.tracking_uri, settings.resolved_workdir())
    if tracking and is_remote(tracking):
        return f"{tracking}  (the tracking server's own UI)"
    flag = f" --tracking-uri {shlex.quote(tracking)}" if tracking else ""
    words = [w for w in command[1:] if not w.startswith("-")]
    if Path(command[0]).name == "recon" and len(words) >= 3 and words[0] == "study":
        study = Path(words[2])
        study = study if study.is_absolute() else settings.resolved_workdir() / study
        return f"recon ui {shlex.quote(str(study))}{flag}"
    return f"recon ui{flag}" if flag else None


# ---------------------------------------------------------------- following jobs

@dataclass(frozen=True)
class SlurmJob:
    """One Slurm job as ``scontrol`` / ``squeue`` / ``sacct`` describe it."""

    job_id: str
    name: str = ""
    state: str = ""          # PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    exit_code: str = ""      # "<status>:<signal>", e.g. "0:0", "143:0" after scancel
    reason: str = ""         # why it is pending or how it ended (Slurm's words)
    nodes: str = ""
    elapsed: str = ""
    log: str = ""            # its output file, when Slurm still knows it

    @property
    def done(self) -> bool:
        """Nothing of the job runs any more (COMPLETING is not done: its processes are still being stopped)."""
        return self.state in TERMINAL


def _fields(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value two ...`` (one ``scontrol -o`` line) as a dict; values may hold spaces."""
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z0-9:/_]*)=", line))
    out = {}
    for m, nxt in zip(keys, keys[1:] + [None]):
        out[m.group(1)] = line[m.end(): nxt.start() if nxt else len(line)].strip()
    return out


def _scontrol_job(job_id: str) -> Optional[dict[str, str]]:
    """The controller's record of the job (kept until MinJobAge after it ended), None when it has none."""
    done = _slurm("scontrol", "show", "job", "-o", str(job_id), check=False)
    if done.returncode != 0:
        if "Invalid job id" in (done.stderr + done.stdout):
            return None
        raise SlurmError(f"Slurm refused `scontrol show job {job_id}`: {_first_lines(done.stderr or done.stdout)}")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("JobId=")), "")
    return _fields(line) if line else None


_SACCT_FIELDS = "JobID,JobName,State,ExitCode,Reason,NodeList,Elapsed"


def _sacct(*args: str) -> Optional[list[SlurmJob]]:
    """Jobs from Slurm's accounting; None when this cluster keeps none (no slurmdbd)."""
    if shutil.which("sacct") is None:
        return None
    done = _slurm("sacct", "-X", "-n", "-P", "-o", _SACCT_FIELDS, *args, check=False)
    if done.returncode != 0:
        if "accounting storage is disabled" in (done.stderr + done.stdout).lower():
            return None
        raise SlurmError(f"Slurm refused `sacct {shlex.join(args)}`: {_first_lines(done.stderr or done.stdout)}")
    jobs = []
    for line in done.stdout.splitlines():
        cols = line.split("|")
        if len(cols) >= 7:
            jid, name, state, code, reason, nodes, elapsed = cols[:7]
            jobs.append(SlurmJob(jid, name, state.split()[0] if state else "", code, reason, nodes, elapsed))
    return jobs


def status(job_id: str) -> SlurmJob:
    """The job's state, exit code, nodes and log file (``scontrol``, else ``sacct`` for older jobs)."""
    job_id = _check_id(job_id)
    rec = _scontrol_job(job_id)
    if rec is not None:
        return SlurmJob(job_id=rec.get("JobId", job_id), name=rec.get("JobName", ""), state=rec.get("JobState", ""),
                        exit_code=rec.get("ExitCode", ""), reason=rec.get("Reason", ""),
                        nodes=rec.get("NodeList", ""), elapsed=rec.get("RunTime", ""), log=rec.get("StdOut", ""))
    history = _sacct("-j", job_id)
    if history:
        return history[0]
    raise SlurmError(f"Slurm does not know job {job_id}: " + (
        "neither the controller nor accounting (sacct) has it" if history is not None else
        "the controller forgets a job some minutes after it ends (MinJobAge) and this cluster keeps no accounting "
        "(sacct is disabled); its log file may still be there"))


def _check_id(job_id: str) -> str:
    job_id = str(job_id).strip()
    if not re.match(r"^\d+(_\d+)?$", job_id):
        raise ReconError(f"not a Slurm job id: {job_id!r} (sbatch prints a number, e.g. 12345)")
    return job_id


def list_jobs(*, all_users: bool = False, name: Optional[str] = None) -> list[SlurmJob]:
    """Your jobs (everyone's with ``all_users``), newest first: those the controller holds, plus accounting's
    last 7 days where the cluster keeps accounting; ``name`` keeps one job name (e.g. ``recon``)."""
    args = ["-h", "-t", "all", "-o", "%i|%j|%T|%r|%N|%M"]
    if not all_users:
        args += ["-u", _user()]
    jobs: dict[str, SlurmJob] = {}
    for line in _slurm("squeue", *args).stdout.splitlines():
        cols = line.split("|")
        if len(cols) >= 6:
            jobs[cols[0]] = SlurmJob(cols[0], cols[1], cols[2], "", cols[3], cols[4], cols[5])
    since = (_dt.datetime.now() - _dt.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S")
    for job in _sacct("-S", since, *([] if not all_users else ["-a"])) or []:
        jobs.setdefault(job.job_id, job)
    rows = [j for j in jobs.values() if name is None or j.name == name]
    return sorted(rows, key=lambda j: [int(p) for p in re.findall(r"\d+", j.job_id)], reverse=True)


def _user() -> str:
    import getpass

    return os.environ.get("USER") or getpass.getuser()


def cancel(job_id: str) -> bool:
    """``scancel`` the job; True when it was still pending or running, False when it had already ended.

    Slurm sends SIGTERM to every process of the job (then SIGKILL after its KillWait): the script stops its
    Ray, the study driver stops; finished trials stay in storage and MLflow, so submitting the same command
    again finishes the grid without training them again.
    """
    job = status(job_id)
    if job.done:
        return False
    _slurm("scancel", job.job_id)
    return True


def wait(job_id: str, timeout_s: float = 3600, poll_s: float = 2.0) -> SlurmJob:
    """Poll until the job has ended (its processes included); ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = status(job_id)
        if job.done:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"Slurm job {job_id} still {job.state} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def log_path(job_id: str, log_dir: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The job's output file: Slurm's record of it, else ``<log_dir>/*-<job id>.out`` (default log dir
    of :class:`SlurmSettings` in the current directory)."""
    job_id = _check_id(job_id)
    rec = _scontrol_job(job_id)
    if rec and rec.get("StdOut"):
        return Path(rec["StdOut"])
    folder = Path(log_dir) if log_dir else SlurmSettings().resolved_log_dir()
    found = sorted(folder.glob(f"*-{job_id}.out"))
    return found[0] if found else None


def logs(job_id: str, follow: bool = False, *, log_dir: Optional[str | os.PathLike] = None,
         poll_s: float = 1.0) -> Iterator[str]:
    """The job's output: all of it now, or (``follow``) as it grows until the job has ended.

    A pending job has no output yet: following waits for it to start.
    """
    job_id = _check_id(job_id)
    if not follow:
        path = log_path(job_id, log_dir)
        if path is None or not path.is_file():
            job = status(job_id)
            if job.state == "PENDING":
                return
            raise SlurmError(f"no output file for Slurm job {job_id} (looked for {path or f'*-{job_id}.out'}); "
                             f"give the log folder the job was submitted with")
        yield path.read_text(errors="replace")
        return
    offset, path = 0, None
    while True:
        job = status(job_id)
        path = path or log_path(job_id, log_dir)
        if path is not None and path.is_file():
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            if chunk:
                offset += len(chunk)
                yield chunk.decode(errors="replace")
        if job.done:
            return
        time.sleep(poll_s)


# ================================================================ inside the job

def wait_for_nodes(address: str, nodes: int, timeout_s: float = 300, pid: Optional[int] = None) -> int:
    """Block until the Ray cluster at ``address`` has ``nodes`` alive nodes; returns how many it has.

    Run by the script between starting Ray and the command, so the command finds the whole allocation.
    ``pid`` is the head's ``ray start`` process: if it dies the wait stops at once (its output says why).
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s

    def check_head() -> None:
        if pid is not None and not Path(f"/proc/{pid}").exists():
            raise SlurmError(f"the Ray head (`ray start`, pid {pid}) exited before the cluster was up; its output "
                             f"is in the job's log above")
        if time.monotonic() > deadline:
            raise SlurmError(f"Ray at {address} did not have {nodes} node(s) after {timeout_s:.0f}s; the other nodes' "
                             f"`ray start` output is in the job's log")

    import socket

    while True:  # the GCS port first: ray.init would otherwise wait a minute on a closed port
        check_head()
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        while True:
            alive = sum(1 for n in ray.nodes() if n.get("Alive"))
            if alive >= nodes:
                return alive
            check_head()
            time.sleep(1)
    finally:
        ray.shutdown()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m recon.orchestration.cluster.slurm wait-for-nodes ...`` (what the sbatch script runs)."""
    parser = argparse.ArgumentParser(prog="python -m recon.orchestration.cluster.slurm")
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("wait-for-nodes", help="wait until a Ray cluster has N alive nodes")
    w.add_argument("--address", required=True, help="HOST:PORT of the Ray head (GCS)")
    w.add_argument("--nodes", type=int, required=True)
    w.add_argument("--timeout-s", type=float, default=300)
    w.add_argument("--pid", type=int, help="the head's `ray start --block` process: stop waiting if it dies")
    args = parser.parse_args(argv)
    try:
        alive = wait_for_nodes(args.address, args.nodes, args.timeout_s, args.pid)
    except ReconError as exc:
        print(f"recon: error: {exc}", file=sys.stderr)
        return 2
    print(f"recon: Ray at {args.address} has {alive} node(s)", flush=True)
    return 0


__all__ = ["SlurmSettings", "SlurmJob", "SlurmError", "render_sbatch", "submit", "status", "logs", "log_path",
           "cancel", "list_jobs", "wait", "wait_for_nodes", "browse_hint", "TERMINAL"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
