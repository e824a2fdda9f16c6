"""The sbatch script of a recon command: Ray started inside the allocation (shared or symmetric mode), the
environment every recon command reads, and the command run on the head node."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional, Sequence

from recon.core.errors import ReconError
from recon.orchestration.cluster.slurm_settings import FIRST_WORKER_OFFSET, MLFLOW_OFFSET, PORT_OFFSETS, SlurmSettings

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
    if settings.mlflow_server and settings.mode == "symmetric":
        parts[4:4] = [_mlflow_cleanup(settings, ray=True), _mlflow_start(settings), _mlflow_wait(settings)]
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
        *([_mlflow_cleanup(s, ray=True), "", _mlflow_start(s)] if s.mlflow_server else
          ["trap stop_ray EXIT", "trap 'exit 143' TERM INT"]),
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
    if s.mlflow_server:
        lines += [_mlflow_wait(s)]
    return "\n".join(lines)


def _symmetric_ray(s: SlurmSettings) -> str:
    return "\n".join([
        "# ---- Ray's own recipe: `ray symmetric-run` on every node; on the head it starts Ray, waits for all nodes,",
        "# runs the command, then `ray stop`s the node; on the others it runs `ray start --block` until the head",
        "# goes. It refuses a node where a Ray already runs, and its `ray stop` stops every Ray of this user there:",
        "# give the job whole nodes (#SBATCH --exclusive).",
        f"gcs_port={s.port}",
        f"export RAY_SYMMETRIC_RUN_CLUSTER_WAIT_TIMEOUT={s.node_wait_s}   # how long the head waits for the nodes",
        "# scancel's SIGTERM ends `ray symmetric-run` before its own `ray stop`, which would leave the head's Ray",
        "# running on a node without cgroup process tracking (and the next symmetric job there refused): on any",
        "# exit, stop this node's Ray as symmetric-run would. The other nodes' `ray start --block` end with the head.",
        "stop_ray() { ray stop --force > /dev/null 2>&1 || true; }",
        "trap stop_ray EXIT",
        "trap 'exit 143' TERM INT",
        'export RAY_ADDRESS="$head_ip:$gcs_port"   # any Ray client of the command joins this cluster',
        'echo "recon: job $SLURM_JOB_ID, nodes $SLURM_JOB_NODELIST; Ray head $head_node at $RAY_ADDRESS, '
        'temp dir $ray_tmp"'])


def _mlflow_cleanup(s: SlurmSettings, *, ray: bool) -> str:
    """Stop the job's MLflow server on any exit (after Ray, in shared mode): its whole process group, since
    ``mlflow server`` runs its web server as child processes."""
    return "\n".join([
        "mlflow_pid=",
        "stop_mlflow() {",
        '  if [[ -n "$mlflow_pid" ]]; then',
        '    kill -TERM -- -"$mlflow_pid" 2>/dev/null || true',
        '    wait "$mlflow_pid" 2>/dev/null || true',
        "  fi",
        "}",
        "trap 'stop_ray; stop_mlflow' EXIT" if ray else "trap stop_mlflow EXIT",
        "trap 'exit 143' TERM INT"])


def _mlflow_start(s: SlurmSettings) -> str:
    """``mlflow server`` on the head node's address, in its own process group, its output beside the job's."""
    from recon.orchestration.tracking.server import store_options

    store, artifacts = s.resolved_mlflow_store(), s.resolved_mlflow_artifacts()
    port = f"$((port_block + {MLFLOW_OFFSET}))" if s.mode == "shared" else str(s.mlflow_port)
    options = [shlex.quote(o) for o in store_options(store, artifacts)]
    server = [f"setsid {shlex.quote(s.python)} -m mlflow server", *[" ".join(options[i:i + 2])
                                                                   for i in range(0, len(options), 2)],
              '--host "$head_ip" --port "$mlflow_port"',
              '--allowed-hosts "$head_ip:$mlflow_port,localhost:$mlflow_port,127.0.0.1:$mlflow_port"']
    log_dir = shlex.quote(str(s.resolved_log_dir()))
    return "\n".join([
        "# ---- an MLflow tracking server on the head node for every run of this job; its runs and artifacts stay",
        "# where they are when the job ends (store and artifacts below): browse them afterwards with",
        f"#   recon ui --tracking-uri {shlex.quote(store)} --artifacts-destination {shlex.quote(artifacts)}",
        f"mlflow_port={port}",
        f'mlflow_log={log_dir}/{s.job_name}-"$SLURM_JOB_ID".mlflow.log',
        _continued(server) + ' > "$mlflow_log" 2>&1 &',
        "mlflow_pid=$!",
        'export MLFLOW_TRACKING_URI="http://$head_ip:$mlflow_port"   # every recon command of the job logs there'])


def _mlflow_wait(s: SlurmSettings) -> str:
    return "\n".join([
        "# The command starts once the server answers (fails early if it exited; its output is in $mlflow_log).",
        _continued([f"{shlex.quote(s.python)} -m recon.orchestration.cluster.slurm wait-for-http",
                    '--url "$MLFLOW_TRACKING_URI/health"', f"--timeout-s {s.node_wait_s}", '--pid "$mlflow_pid"',
                    '--log "$mlflow_log"']),
        'echo "recon: MLflow server at $MLFLOW_TRACKING_URI (output: $mlflow_log)"'])


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
    if s.mlflow_server and _given(command, _TRACKING) is not None:
        raise ReconError(f"the command gives {_TRACKING} {_given(command, _TRACKING)!r} but the job starts its own "
                         f"MLflow server (mlflow_server) and points MLFLOW_TRACKING_URI at it: keep one")
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
