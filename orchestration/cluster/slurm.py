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

``recon submit --slurm ...`` and ``recon jobs list|status|logs|stop`` (for a job id of digits, or with
``--slurm``) call exactly these: ``SlurmSettings`` is a :class:`~recon.core.config.Config`, so
``add_config_arguments(parser, SlurmSettings, prefix="slurm-")`` gives one flag per field
(``--slurm-nodes``, ``--slurm-gpus-per-node``...) and ``config_from_args`` builds the settings.
``mlflow_server`` adds an MLflow tracking server on the head node for the job (see ``slurm_script``).

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
telemetry opt-outs recon gives every process (``core.privacy.OFFLINE_ENV``); and ``RAY_ADDRESS``, so the
command joins the allocation's Ray. recon commands read all of them, so the command runs as given.

The settings are ``slurm_settings``, the script ``slurm_script``; this module submits and follows jobs.

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

from recon.core.errors import ReconError
from recon.orchestration.cluster.slurm_settings import SlurmError, SlurmSettings, TERMINAL
from recon.orchestration.cluster.slurm_script import _absolute_tracking, render_sbatch

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
    if settings.mlflow_server:
        say(f"  MLflow:  a server on the head node while the job runs (its address: `recon: MLflow server at` in "
            f"the log; output {settings.mlflow_log_path(job_id)}); afterwards: {browse}")
    elif browse:
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
    if settings.mlflow_server:  # the job's server stops with it; its store and artifacts stay
        flag = (f" --tracking-uri {shlex.quote(settings.resolved_mlflow_store())} --artifacts-destination "
                f"{shlex.quote(settings.resolved_mlflow_artifacts())}")
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


def wait_for_http(url: str, timeout_s: float = 300, pid: Optional[int] = None,
                  log: Optional[str] = None) -> None:
    """Block until ``url`` answers 200 (the job's MLflow server's ``/health``); stop at once if ``pid`` dies."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if pid is not None and not Path(f"/proc/{pid}").exists():
            tail = ""
            if log and Path(log).is_file():
                tail = ": " + _first_lines("\n".join(Path(log).read_text(errors="replace").splitlines()[-5:]), 5)
            raise SlurmError(f"the server behind {url} (pid {pid}) exited before it answered{tail}")
        if time.monotonic() > deadline:
            raise SlurmError(f"{url} did not answer within {timeout_s:.0f}s" + (f"; see {log}" if log else ""))
        time.sleep(0.5)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m recon.orchestration.cluster.slurm wait-for-nodes ...`` (what the sbatch script runs)."""
    parser = argparse.ArgumentParser(prog="python -m recon.orchestration.cluster.slurm")
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("wait-for-nodes", help="wait until a Ray cluster has N alive nodes")
    w.add_argument("--address", required=True, help="HOST:PORT of the Ray head (GCS)")
    w.add_argument("--nodes", type=int, required=True)
    w.add_argument("--timeout-s", type=float, default=300)
    w.add_argument("--pid", type=int, help="the head's `ray start --block` process: stop waiting if it dies")
    h = sub.add_parser("wait-for-http", help="wait until a URL answers 200 (the job's MLflow server)")
    h.add_argument("--url", required=True)
    h.add_argument("--timeout-s", type=float, default=300)
    h.add_argument("--pid", type=int, help="the server's process: stop waiting if it dies")
    h.add_argument("--log", help="the server's output file, quoted when it dies")
    args = parser.parse_args(argv)
    try:
        if args.what == "wait-for-http":
            wait_for_http(args.url, args.timeout_s, args.pid, args.log)
            return 0
        alive = wait_for_nodes(args.address, args.nodes, args.timeout_s, args.pid)
    except ReconError as exc:
        print(f"recon: error: {exc}", file=sys.stderr)
        return 2
    print(f"recon: Ray at {args.address} has {alive} node(s)", flush=True)
    return 0

__all__ = ["SlurmSettings", "SlurmJob", "SlurmError", "render_sbatch", "submit", "status", "logs", "log_path",
           "cancel", "list_jobs", "wait", "wait_for_nodes", "wait_for_http", "browse_hint", "TERMINAL"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
