"""A real two-node Ray cluster on one machine, whose worker node shares no disk with the driver.

    with two_node_cluster(tmp_path, hidden=[out_dir, data_dir]) as cluster:
        env = {**os.environ, **cluster.env}         # RAY_AUTH_MODE=token, RAY_AUTH_TOKEN=...
        subprocess.run([sys.executable, "-c", "import ray; ray.init(address=...)"], env=env)
        cluster.kill_worker(); cluster.start_worker()

The head node (``ray start --head --num-cpus=0``) runs in this machine's normal view of the disk:
it is where the study driver, the dashboard and the Ray Jobs server live. The worker node
(``ray start --address=HEAD --num-cpus=N --resources={"recon_worker": 8}``) runs inside its own
mount namespace (``unshare --mount --fork``, needs root) in which private, empty tmpfs mounts
cover:

- every directory in ``hidden`` (the driver's output directory, the data directory ...);
- ``$HOME`` (so ``~/.ray/auth_token``, ``~/.cache`` and any driver-local file are invisible; the
  worker gets the token from ``RAY_AUTH_TOKEN``). Directories under ``$HOME`` that hold the
  *installed software* (the Python prefix, e.g. ``~/.pyenv``, and the recon source tree if it is
  there) are bind-mounted back read-only, like a node image that has recon installed;
- the cluster's Ray temp dir (``/tmp/rc-XXXX``): the worker gets its own session dir, sockets,
  logs and object spilling there, as a separate machine would.

Everything else (``/usr``, ``/work/main``, ``cluster.shared``) stays visible: ``shared`` is the
stand-in for NFS / S3.

Token authentication is on: the harness makes a fresh token per cluster and gives it to every Ray
process by environment (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``), never touching
``~/.ray/auth_token``. Every port is picked free, and teardown kills exactly the processes the
harness started (the ``ray start --block`` process trees) -- not ``ray stop``, which would stop
every other Ray cluster on the machine.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

RAY_BIN = str(Path(sys.executable).with_name("ray"))
NODE_START_TIMEOUT_S = 120.0


def unshare_available() -> str | None:
    """``None`` when a private mount namespace can be made here, else the reason it cannot."""
    if shutil.which("unshare") is None:
        return "the `unshare` command (util-linux) is not installed"
    if os.geteuid() != 0:
        return "unshare --mount needs root (the harness mounts tmpfs over the worker's view)"
    probe = subprocess.run(["unshare", "--mount", "--fork", "--propagation", "private",
                            "sh", "-c", "mount -t tmpfs tmpfs /mnt && umount /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount / mount -t tmpfs failed: {probe.stderr.strip()}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (Ray workers call setpgrp, so a process group is
    not enough to find them)."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def kill_tree(proc: subprocess.Popen | None, sig: int = signal.SIGKILL, timeout: float = 20.0) -> None:
    """SIGKILL ``proc`` and all its descendants (re-scanning: reparented orphans of a dying raylet
    are collected by pid before it dies), then reap ``proc``."""
    if proc is None:
        return
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < deadline:
        pids = [p for p in descendants(proc.pid) if Path(f"/proc/{p}").exists()]
        if proc.poll() is not None:
            pids = [p for p in pids if p != proc.pid]
        pids = [p for p in pids if p not in seen or Path(f"/proc/{p}").exists()]
        if not pids:
            break
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
            seen.add(p)
        time.sleep(0.2)
        # zombies under a live parent show in /proc; stop once only zombies remain
        if all(_state(p) in ("Z", "") for p in pids if p != proc.pid) and proc.poll() is not None:
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    # Anything the tree left behind that reparented to init: kill by the pids we saw.
    for p in seen:
        if _state(p) not in ("Z", ""):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


@dataclass
class TwoNodeCluster:
    """A running head node plus (at most) one worker node; see the module docstring."""

    tmp: Path
    shared: Path
    hidden: list[Path]
    worker_resources: dict[str, float]
    worker_cpus: int
    object_store_bytes: int = 150 * 1024 * 1024
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    temp_dir: Path = field(default_factory=lambda: Path(f"/tmp/rc-{secrets.token_hex(4)}"))
    gcs_port: int = 0
    dashboard_port: int = 0
    head_proc: subprocess.Popen | None = None
    worker_proc: subprocess.Popen | None = None
    head_node_id: str | None = None
    worker_node_id: str | None = None
    dead_worker_ids: list[str] = field(default_factory=list)
    _worker_starts: int = 0
    _ports: set[int] = field(default_factory=set)
    _logs: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gcs_port = self.gcs_port or self.port()
        self.dashboard_port = self.dashboard_port or self.port()

    def port(self) -> int:
        """A free port not yet handed to any component of this cluster (Ray refuses duplicates)."""
        while True:
            p = free_port()
            if p not in self._ports:
                self._ports.add(p)
                return p

    # -- what a client needs ----------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The GCS address for ``ray.init(address=...)`` / ``ray start --address``."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The Ray Jobs / dashboard HTTP address (``JobSubmissionClient``, ``recon submit``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        """Env vars a client process (driver, ``recon submit``) needs to talk to this cluster.

        An explicit ``ray.init(address=...)`` never turns token auth on by itself (only
        ``address=None/'auto'`` with a token file does), so ``RAY_AUTH_MODE=token`` is required.
        """
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def client_env(self, **extra: str) -> dict[str, str]:
        """``os.environ`` + :attr:`env`, without inherited Ray settings that could point elsewhere."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        env.update(self.env)
        env.update(extra)
        return env

    def _node_env(self) -> dict[str, str]:
        env = self.client_env(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        # A fast death verdict for kill_worker(): the GCS marks a silent raylet dead in ~3 s.
        env.setdefault("RAY_health_check_period_ms", "1000")
        env.setdefault("RAY_health_check_failure_threshold", "3")
        return env

    def _port_flags(self) -> list[str]:
        return [f"--node-manager-port={self.port()}", f"--object-manager-port={self.port()}",
                f"--dashboard-agent-listen-port={self.port()}",
                f"--dashboard-agent-grpc-port={self.port()}",
                f"--runtime-env-agent-port={self.port()}", f"--metrics-export-port={self.port()}",
                f"--object-store-memory={self.object_store_bytes}", "--disable-usage-stats"]

    # -- HTTP state API ---------------------------------------------------------------------------
    def api(self, path: str, token: str | None = "default") -> tuple[int, str]:
        """GET ``path`` on the dashboard with the cluster token (``token=None``: without one)."""
        req = urllib.request.Request(self.dashboard_url + path)
        tok = self.token if token == "default" else token
        if tok is not None:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def nodes(self) -> list[dict]:
        status, body = self.api("/api/v0/nodes?limit=100&detail=true")
        if status != 200:
            raise RuntimeError(f"state API answered {status}: {body[:300]}")
        return json.loads(body)["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.nodes() if n.get("state") == "ALIVE"]

    # -- lifecycle --------------------------------------------------------------------------------
    def start_head(self, attempts: int = 3) -> None:
        """Start the head node; retried with fresh ports if one was taken meanwhile (a race with
        other processes on this machine)."""
        for attempt in range(attempts):
            try:
                return self._start_head_once()
            except RuntimeError:
                kill_tree(self.head_proc)
                self.head_proc = None
                log = (self.tmp / "head.log").read_text(errors="replace")
                if attempt == attempts - 1 or "port" not in log.lower():
                    raise
                self.gcs_port, self.dashboard_port = self.port(), self.port()

    def _start_head_once(self) -> None:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        cmd = [RAY_BIN, "start", "--head", "--block", "--num-cpus=0", "--node-ip-address=127.0.0.1",
               f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
               "--dashboard-host=127.0.0.1", "--include-dashboard=true",
               f"--ray-client-server-port={self.port()}", f"--temp-dir={self.temp_dir}",
               *self._port_flags()]
        log = open(self.tmp / "head.log", "ab")
        self._logs.append(log)
        self.head_proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          env=self._node_env(), start_new_session=True,
                                          cwd=self.tmp)
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive(self.head_proc, "head")
            try:
                alive = self.alive_nodes()
            except (OSError, RuntimeError, ValueError, KeyError):
                time.sleep(1)
                continue
            if alive:
                self.head_node_id = alive[0]["node_id"]
                return
            time.sleep(1)
        raise TimeoutError(f"head node did not come up in {NODE_START_TIMEOUT_S:.0f}s; "
                           f"see {self.tmp / 'head.log'}")

    def _software_under_home(self, home: Path) -> list[Path]:
        """Top-level directories under $HOME holding the interpreter, site-packages or recon."""
        import recon.orchestration as orch

        keep: set[Path] = set()
        candidates = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve(),
                      Path(orch.__file__).resolve().parents[1], Path(RAY_BIN).resolve()]
        for c in candidates:
            try:
                rel = c.resolve().relative_to(home)
            except ValueError:
                continue
            if rel.parts:
                keep.add(home / rel.parts[0])
        return sorted(keep)

    def _worker_script(self) -> str:
        home = Path(os.environ.get("HOME", "/root")).resolve()
        stash = self.temp_dir / ".keep"
        keep = self._software_under_home(home)
        lines = ["set -eu",
                 # private, empty Ray temp dir: own session dir, sockets, logs, spilling
                 f"mount -t tmpfs -o mode=0755 tmpfs {self.temp_dir}",
                 f"mkdir -p {stash}"]
        for i, k in enumerate(keep):
            lines += [f"mkdir -p {stash}/{i}", f"mount --bind {k} {stash}/{i}"]
        lines.append(f"mount -t tmpfs -o mode=0700 tmpfs {home}")
        for i, k in enumerate(keep):
            lines += [f"mkdir -p {k}", f"mount --bind {stash}/{i} {k}",
                      f"mount -o remount,bind,ro {k}", f"umount {stash}/{i}"]
        for h in self.hidden:
            lines += [f"mkdir -p {h}", f"mount -t tmpfs -o mode=0755 tmpfs {h}"]
        cmd = [RAY_BIN, "start", f"--address={self.address}", "--block",
               "--node-ip-address=127.0.0.1", f"--num-cpus={self.worker_cpus}",
               f"--resources={json.dumps(self.worker_resources)}", *self._port_flags()]
        lines.append("cd /")
        lines.append("exec " + " ".join(_sh_quote(c) for c in cmd))
        return "\n".join(lines) + "\n"

    def start_worker(self) -> str:
        """Start a fresh worker node in its own mount namespace; returns its node id."""
        if self.worker_proc is not None and self.worker_proc.poll() is None:
            raise RuntimeError("a worker node is already running; kill_worker() first")
        for h in self.hidden:
            if not h.is_dir():
                raise FileNotFoundError(f"hidden directory {h} must exist to be covered")
        before = {n["node_id"] for n in self.nodes()}
        self._worker_starts += 1
        script = self.tmp / f"worker{self._worker_starts}.sh"
        script.write_text(self._worker_script())
        log = open(self.tmp / f"worker{self._worker_starts}.log", "ab")
        self._logs.append(log)
        self.worker_proc = subprocess.Popen(
            ["unshare", "--mount", "--fork", "--propagation", "private", "bash", str(script)],
            stdout=log, stderr=subprocess.STDOUT, env=self._node_env(), start_new_session=True)
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive(self.worker_proc, f"worker (log {log.name})")
            new = [n for n in self.alive_nodes() if n["node_id"] not in before]
            if new:
                self.worker_node_id = new[0]["node_id"]
                return self.worker_node_id
            time.sleep(1)
        raise TimeoutError(f"worker node did not join in {NODE_START_TIMEOUT_S:.0f}s; see {log.name}")

    def kill_worker(self, wait_dead: bool = True) -> None:
        """Kill the worker node abruptly: SIGKILL its raylet, then everything else it ran (a lost
        machine); with ``wait_dead``, wait until the GCS has marked the node DEAD."""
        if self.worker_proc is None:
            return
        for pid in descendants(self.worker_proc.pid):
            if _comm(pid) == "raylet":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        kill_tree(self.worker_proc)
        self.worker_proc = None
        dead_id, self.worker_node_id = self.worker_node_id, None
        if dead_id:
            self.dead_worker_ids.append(dead_id)
        if wait_dead and dead_id:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(n["node_id"] != dead_id for n in self.alive_nodes()):
                    return
                time.sleep(0.5)
            raise TimeoutError(f"the GCS still lists killed node {dead_id} as alive after 60s")

    def stop(self) -> None:
        """Kill the worker then the head process trees and remove the Ray temp dir."""
        with contextlib.suppress(Exception):
            kill_tree(self.worker_proc)
        self.worker_proc = None
        with contextlib.suppress(Exception):
            kill_tree(self.head_proc)
        self.head_proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        for log in self._logs:
            log.close()

    @staticmethod
    def _check_alive(proc: subprocess.Popen | None, what: str) -> None:
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"the {what} `ray start` process exited "
                               f"(code {None if proc is None else proc.returncode})")


def _sh_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


@contextlib.contextmanager
def two_node_cluster(tmp_path: Path, worker_resources: dict[str, float] | None = None,
                     worker_cpus: int = 2, *, hidden: Sequence[Path | str] = (),
                     shared: Path | str | None = None,
                     start_worker: bool = True) -> Iterator[TwoNodeCluster]:
    """Start a head node and one namespaced worker node; stop both on exit, even on failure.

    ``hidden``: directories (driver output, data dir, ...) that the worker node sees as empty
    tmpfs. ``shared``: the directory standing for NFS/S3 (default ``tmp_path/shared``), visible to
    both nodes. Raises ``RuntimeError`` naming the reason if ``unshare`` cannot be used.
    """
    reason = unshare_available()
    if reason:
        raise RuntimeError(reason)
    tmp_path = Path(tmp_path)
    shared_dir = Path(shared) if shared is not None else tmp_path / "shared"
    shared_dir.mkdir(parents=True, exist_ok=True)
    cluster = TwoNodeCluster(tmp=tmp_path, shared=shared_dir,
                             hidden=[Path(h).resolve() for h in hidden],
                             worker_resources=dict(worker_resources or {"recon_worker": 8}),
                             worker_cpus=worker_cpus)
    try:
        cluster.start_head()
        if start_worker:
            cluster.start_worker()
        yield cluster
    finally:
        cluster.stop()
