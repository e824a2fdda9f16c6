"""A real one-node Slurm on this machine, for tests: munged, slurmctld and slurmd with a config of their own.

    with slurm_cluster(tmp_path) as cluster:     # or the ``slurm_cluster_fixture`` fixture below
        env = {**os.environ, **cluster.env}      # SLURM_CONF=<its slurm.conf>
        subprocess.run(["sbatch", "--parsable", "job.sh"], env=env)

Everything lives in one temporary folder: a fresh munge key, the munge socket, slurm.conf, the
controller's state, slurmd's spool and every log. Both daemons listen on free ports and run in the
foreground as children of the test (``-D`` / ``-F``; slurmd under ``unshare``, below), so stopping them is
signalling the processes this harness started, never anything found by name. The node is this machine (its short hostname, at
127.0.0.1) with all its CPUs; ``ReturnToService=2`` makes it idle as soon as slurmd registers.

slurmd runs in a PID and mount namespace of its own (``unshare --pid --fork --mount-proc --mount``), so
every job step it launches does too: inside, ``/proc`` lists only the jobs' processes and ``/tmp/ray``
(Ray's default session folder) is a folder of this harness bound over the machine's. ``ray symmetric-run``
can then be tested on a machine where other Rays run: its "is a Ray already running here" check and the
``ray stop`` it ends with see only the job's processes, and ``ray stop``'s removal of
``/tmp/ray/ray_current_cluster`` touches only the private folder. The namespace's first process (a few
lines of bash) reaps orphans and passes SIGTERM on to slurmd; when it ends, the kernel kills whatever is
left in the namespace. An ``Epilog`` stands in for ``proctrack/cgroup``: after each job it SIGKILLs the
processes of the namespace that still carry the job's ``SLURM_JOB_ID`` (``proctrack/linuxproc`` loses
daemons that leave their parent, like the Ray processes a non-blocking ``ray start`` leaves behind, which a
real cluster's cgroup would kill) and logs each one, so a test can tell a job that cleaned up after itself
(:meth:`SlurmCluster.epilog_kills` empty) from one the epilog had to clean up after.

Nothing is installed here. When the binaries are missing the fixture fails (it does not skip) and
says to run the README's test command, which installs them (Debian: ``slurmctld slurmd slurm-client
munge``). The daemons must run as root (``SlurmUser=root``), like the other cluster tests.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
NAMESPACE_TOOLS = ("unshare", "mount")  # util-linux / mount: slurmd's PID and mount namespace
START_TIMEOUT_S = 60.0
INSTALL_HINT = ("run the README's test command, which installs them "
                "(apt-get install -y slurmctld slurmd slurm-client munge; unshare and mount come with util-linux "
                "and mount)")


def missing_binaries() -> list[str]:
    """The Slurm / munge programs this harness needs that are not on PATH (or in /usr/sbin)."""
    return [name for name in DAEMONS + CLIENTS + NAMESPACE_TOOLS if _which(name) is None]


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


#: The first process of slurmd's namespace (PID 1 there): bind the private Ray folder ($1) over /tmp/ray,
#: run slurmd (the rest), pass SIGTERM / SIGINT on to it, reap every orphan until it exits. It refuses to go on
#: when it is not PID 1 of a fresh PID namespace, so nothing it starts can reach the machine's other processes.
NAMESPACE_INIT = r"""set -u
if [[ $$ != 1 ]]; then echo "slurm harness: not PID 1 of a new PID namespace" >&2; exit 90; fi
mkdir -p /tmp/ray
mount --bind "$1" /tmp/ray || { echo "slurm harness: cannot bind $1 over /tmp/ray" >&2; exit 91; }
shift
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
rc=0
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
exit "$rc"
"""

#: The Epilog (run by slurmd, as root, in its namespace, after each job): SIGKILL the job's leftovers, as a
#: cgroup would, and log them ("job ID killed PID COMMAND") for :meth:`SlurmCluster.epilog_kills`.
EPILOG = r"""#!{python}
import os, signal, time
job, me, log = os.environ.get("SLURM_JOB_ID", ""), os.getpid(), {log!r}
mark = ("SLURM_JOB_ID=" + job).encode()
for _ in range(3):
    found = []
    for entry in os.listdir("/proc"):
        if not job or not entry.isdigit() or int(entry) == me:
            continue
        try:
            env = open(f"/proc/{{entry}}/environ", "rb").read().split(b"\0")
            cmd = open(f"/proc/{{entry}}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if mark in env and cmd:
            found.append(entry)
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                continue
            with open(log, "a") as out:
                out.write(f"job {{job}} killed {{entry}} {{cmd[:300]}}\n")
    if not found:
        break
    time.sleep(0.5)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    """One running controller and one node; see the module docstring."""

    root: Path
    cpus: int
    memory_mb: int = 1000
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    partition: str = "debug"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _logs: list = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a Slurm client (sbatch, squeue...) needs in its environment to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run([_which(args[0]) or args[0], *args[1:]], env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=60, check=check)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        for d in ("munge", "state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o711)  # clients must reach the socket; munged wants no group/other write
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        self._start("munged", [_which("munged"), "--foreground", "--force", f"--key-file={key}",
                               f"--socket={self.socket}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}",
                               f"--seed-file={self.root / 'munge' / 'munged.seed'}"])
        self._wait(lambda: self.socket.exists(), "munged's socket")
        (self.root / "ray").mkdir(exist_ok=True)
        (self.root / "ray").chmod(0o1777)
        self.epilog.write_text(EPILOG.format(python=sys.executable, log=str(self.epilog_log)))
        self.epilog.chmod(0o755)
        self.conf.write_text(self._config(free_port(), free_port()))
        self._start("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", [_which("unshare"), "--pid", "--fork", "--mount-proc", "--mount",
                               "--kill-child=SIGKILL", "bash", "-c", NAMESPACE_INIT, "slurm-namespace",
                               self.root / "ray", _which("slurmd"), "-D", "-N", self.node, "-f", self.conf])
        self._wait(self._node_idle, f"node {self.node} idle in sinfo")

    @property
    def epilog(self) -> Path:
        return self.root / "epilog"

    @property
    def epilog_log(self) -> Path:
        return self.root / "log" / "epilog-kills.log"

    def epilog_kills(self, job_id: str) -> list[str]:
        """The command lines of the job's processes the Epilog had to kill (empty: the job left nothing behind)."""
        if not self.epilog_log.is_file():
            return []
        prefix = f"job {job_id} killed "
        return [ln[len(prefix):] for ln in self.epilog_log.read_text().splitlines() if ln.startswith(prefix)]

    @property
    def socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def _config(self, ctld_port: int, slurmd_port: int) -> str:
        r = self.root
        return "\n".join([
            "ClusterName=recontest",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            f"Epilog={self.epilog}",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            "InactiveLimit=0",
            "KillWait=10",
            "MinJobAge=600",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n"

    def _start(self, name: str, cmd: list) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env}, start_new_session=True)

    def _node_idle(self) -> bool:
        done = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return done.returncode == 0 and done.stdout.strip().lower().startswith("idle")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                                       f"{self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"no {what} after {START_TIMEOUT_S:.0f}s:\n" +
                           "\n".join(self.log_tail(n) for n in self.procs))

    def log_tail(self, name: str, lines: int = 20) -> str:
        out = []
        for path in (self.root / "log" / f"{name}.out", self.root / "log" / f"{name}.log"):
            if path.is_file():
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {name}\n" + "\n".join(out)

    def cancel_all(self, timeout: float = 90) -> None:
        """Cancel every job this cluster still runs and wait until none is left (their processes gone)."""
        jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        if jobs:
            self.run("scancel", *jobs, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
                return
            time.sleep(1)

    def stop(self) -> None:
        """Cancel the jobs, then stop slurmd, slurmctld and munged (the processes started here)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()
        self._logs.clear()

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        """``sig`` to a daemon; for slurmd, to its namespace's first process (``unshare`` ignores SIGTERM), which
        passes it on to slurmd and, once slurmd is gone, ends the namespace and everything left in it. (Killing
        ``unshare`` itself, the fallback, SIGKILLs that first process: ``--kill-child``.)"""
        target = proc.pid
        if Path(str(proc.args[0])).name == "unshare":
            with contextlib.suppress(OSError, IndexError, ValueError):
                target = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)


@contextlib.contextmanager
def slurm_cluster(root: Path, cpus: int | None = None) -> Iterator[SlurmCluster]:
    """Start a one-node Slurm in ``root`` (fails, naming what is missing, without the binaries); stop it on exit."""
    missing = missing_binaries()
    if missing:
        raise RuntimeError(f"Slurm is not installed here (missing: {', '.join(missing)}): {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise RuntimeError("the Slurm test harness runs slurmd/slurmctld as root (SlurmUser=root): run as root")
    cluster = SlurmCluster(root=Path(root), cpus=cpus or os.cpu_count() or 1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def slurm_cluster_fixture(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A running one-node Slurm for the module's tests, with ``SLURM_CONF`` set in this process's environment
    (so ``sbatch``, ``squeue``... and ``recon.orchestration.cluster.slurm`` reach it). Fails without Slurm."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"Slurm is not installed here (missing: {', '.join(missing)}): {INSTALL_HINT}", pytrace=False)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster
