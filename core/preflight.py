"""Check before compute: everything a command will need, verified before it trains or builds anything.

A command collects every problem it can find (:class:`Preflight`), then refuses once, naming each problem and
its fix in one paragraph (:class:`PreflightError`, exit 2) with nothing written. What is checked:

* output folders and files (:meth:`Preflight.writable_dir`, :meth:`Preflight.new_file`): not a file where a
  folder goes, not under a file, really writable (a probe file is created and removed: as root, permission
  bits alone say nothing);
* storage locations (:meth:`Preflight.storage`): a path or a URI (``s3://``...), written and read back;
* inputs that must exist (:meth:`Preflight.existing_dir`);
* the device (:meth:`Preflight.device`) and seeds within what torch accepts (:meth:`Preflight.seed`);
* on a Ray cluster of more than one node, that the storage location is the same place for every node
  (:func:`storage_problems_on_cluster`): the driver writes a marker, a task pinned to each node reads it and
  writes one back, and the driver reads those; and that some node can hold what a trial or a worker asks
  for (:func:`resource_problems`).
"""
from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from recon.core.defaults import MAX_SEED
from recon.core.errors import Refused

PROBE_PREFIX = ".recon-preflight-"


@dataclass(frozen=True)
class Problem:
    """One thing that would fail later: what (naming the path, flag or value) and how to fix it."""

    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}: {self.fix}"


class PreflightError(Refused):
    """A command refused before it computed anything; the message lists every problem with its fix."""

    def __init__(self, action: str, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        listed = " ".join(f"({i}) {p}." for i, p in enumerate(self.problems, start=1))
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{action} did not start ({len(self.problems)} {noun}; nothing was run or written): {listed}")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def _probe(directory: Path) -> Optional[str]:
    """None when a file can be created (and removed) in ``directory``, else the reason."""
    try:
        fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=directory)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(name)
    return None


class Preflight:
    """Problems collected for one command; :meth:`raise_if_any` refuses with all of them at once."""

    def __init__(self, action: str) -> None:
        self.action = action
        self.problems: list[Problem] = []

    def add(self, what: str, fix: str) -> None:
        self.problems.append(Problem(what, fix))

    def extend(self, problems: Iterable[Problem]) -> None:
        self.problems.extend(problems)

    def raise_if_any(self) -> None:
        if self.problems:
            raise PreflightError(self.action, self.problems)

    # -------------------------------------------------------------- locations
    def writable_dir(self, path: str | os.PathLike, what: str, fix: str = "choose a folder you can write") -> bool:
        """A folder that will hold outputs: an existing writable folder, or one that can be created."""
        p = Path(path).expanduser()
        if os.path.lexists(p) and not p.is_dir():
            kind = "a broken link" if p.is_symlink() and not p.exists() else "a file"
            self.add(f"{what} {p} is {kind}, not a folder", fix)
            return False
        base = _nearest_existing(p)
        if not base.is_dir():
            self.add(f"{what} {p} lies under the file {base}", fix)
            return False
        reason = _probe(base)
        if reason is not None:
            self.add(f"{what} {p} cannot be written (a test file in {base}: {reason})", fix)
            return False
        return True

    def new_file(self, path: str | os.PathLike, what: str, fix: str = "choose a file name in a folder you can write",
                 overwrite: bool = True) -> bool:
        """A file about to be written: its folder writable, and no folder in its place."""
        p = Path(path).expanduser()
        if p.is_dir():
            self.add(f"{what} {p} is a folder", fix)
            return False
        if not overwrite and os.path.lexists(p):
            self.add(f"{what} {p} exists already", fix)
            return False
        return self.writable_dir(p.parent, f"the folder of {what}", fix)

    def existing_dir(self, path: str | os.PathLike, what: str, fix: str, marker: Optional[str] = None) -> bool:
        """An input folder that must exist (and hold ``marker`` when given)."""
        p = Path(path).expanduser()
        if not p.is_dir():
            self.add(f"{what} {p} does not exist" if not os.path.lexists(p) else f"{what} {p} is not a folder", fix)
            return False
        if marker and not (p / marker).is_file():
            self.add(f"{what} {p} has no {marker}", fix)
            return False
        return True

    def storage(self, uri: str, what: str = "the storage location",
                fix: str = "give --storage a path or URI this machine can write (a shared folder on a cluster)") -> bool:
        """A storage location: a path is probed like an output folder; for a URI a marker is written, read back
        and removed."""
        from recon.core.storage import Storage, is_uri

        if not is_uri(uri):
            return self.writable_dir(uri, what, fix)
        try:
            store = Storage.from_uri(uri)
            rel = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
            store.write_text(rel, "recon")
            ok = store.read_text(rel) == "recon"
            store.delete(rel)
        except Exception as exc:  # noqa: BLE001 - any failure of the location is the user's to fix
            self.add(f"{what} {uri} cannot be written and read back ({type(exc).__name__}: {exc})", fix)
            return False
        if not ok:
            self.add(f"{what} {uri} does not give back what was written", fix)
        return ok

    # -------------------------------------------------------------- values
    def device(self, name: str, what: str = "--device") -> None:
        """``auto``, ``cpu`` or a CUDA device that exists here."""
        if name in ("auto", "cpu"):
            return
        import torch

        if not name.startswith("cuda"):
            self.add(f"{what} {name!r} is not a device recon uses", "give auto, cpu or cuda[:N]")
            return
        if not torch.cuda.is_available():
            self.add(f"{what} {name} asks for CUDA, which this machine does not have",
                     "use --device cpu (or auto), or run where a GPU is")
            return
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            self.add(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                     f"give cuda:0..cuda:{torch.cuda.device_count() - 1}")

    def gpu(self, what: str, fix: str) -> None:
        """``what`` needs a CUDA GPU on this machine."""
        import torch

        if not torch.cuda.is_available():
            self.add(f"{what} needs a GPU, and this machine has none that torch can use", fix)

    def seed(self, value: object, what: str = "--seed") -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
            self.add(f"{what} {value!r} is not a seed torch accepts", f"give an integer from 0 to {MAX_SEED}")


def resource_problems(needs: dict[str, float], what: str, fix: str) -> list[Problem]:
    """With Ray running: a problem when no live node has every resource of one ``needs`` bundle (a trial, a
    Ray Train worker); Ray would keep it pending forever rather than fail."""
    import ray

    wanted = {k: v for k, v in needs.items() if v > 0}
    for node in ray.nodes():
        have = node.get("Resources", {}) if node.get("Alive") else {}
        if all(have.get(k, 0.0) >= v for k, v in wanted.items()):
            return []
    shown = ", ".join(f"{k} {v:g}" for k, v in wanted.items())
    return [Problem(f"no node of the Ray cluster has what {what} asks for ({shown})", fix)]


def cluster_gpu_memory_bytes(timeout_s: float = 60.0) -> Optional[int]:
    """With Ray running: the memory of the smallest GPU on the cluster's live GPU nodes (None: none answered).

    One task per GPU node, asking for no GPU (so it never waits behind running trials), reads the node's
    GPUs with :func:`recon.core.hardware.gpu_memory_bytes`. A trial may land on any GPU node, hence the
    smallest.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def probe() -> Optional[int]:
        from recon.core.hardware import gpu_memory_bytes

        return gpu_memory_bytes()

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    found = [v for v in ray.get(done) if v]
    return min(found) if found else None


def storage_problems_on_cluster(uri: str, what: str = "the storage location", timeout_s: float = 120.0
                                ) -> list[Problem]:
    """On a joined Ray cluster of more than one node: each node that cannot read the driver's marker in ``uri``
    or write its own there (a folder that is not shared, credentials missing on a node). Ray must be running."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from recon.core.storage import Storage

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return []
    store = Storage.from_uri(uri)
    rel = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    store.write_text(f"{rel}/driver", "recon")

    @ray.remote(num_cpus=0, max_retries=0)
    def echo(node_id: str) -> Optional[str]:
        from recon.core.storage import Storage as NodeStorage

        try:
            node_store = NodeStorage.from_uri(uri)
            if node_store.read_text(f"{rel}/driver") != "recon":
                return "the driver's marker reads differently there"
            node_store.write_text(f"{rel}/{node_id}", "recon")
            return None
        except Exception as exc:  # noqa: BLE001 - reported to the driver as this node's problem
            return f"{type(exc).__name__}: {exc}"

    pending = {echo.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
               .remote(n["NodeID"]): n for n in nodes}
    problems = []
    try:
        done, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        for ref in late:
            node = pending[ref]
            problems.append(Problem(f"{what} {uri} could not be checked from node {node['NodeManagerAddress']} "
                                    f"({node['NodeID'][:12]}) within {timeout_s:.0f} s", "check that the node is up"))
        for ref in done:
            node = pending[ref]
            error = ray.get(ref)
            if error is None and not store.exists(f"{rel}/{node['NodeID']}"):
                error = "what it wrote is not visible to the driver"
            if error is not None:
                problems.append(Problem(
                    f"{what} {uri} is not the same place on node {node['NodeManagerAddress']} "
                    f"({node['NodeID'][:12]}): {error}",
                    "give --storage (or RECON_STORAGE, or the spec's storage:) a location every node reads and "
                    "writes: a shared folder mounted at the same path on every node, or s3:// / gs://"))
    finally:
        store.delete(rel)
    return problems


__all__ = ["Problem", "Preflight", "PreflightError", "storage_problems_on_cluster", "resource_problems",
           "cluster_gpu_memory_bytes", "MAX_SEED"]
