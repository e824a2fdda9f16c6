"""What a Slurm job of recon asks for (:class:`SlurmSettings`) and the facts of Slurm and Ray ports it follows."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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
#: Offset of the MLflow server's port within a job's block (shared mode; between Ray's and the workers').
MLFLOW_OFFSET = 9

#: Unix socket paths are limited to 107 bytes; Ray's deepest is
#: <root>/ray-<job id>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (about 80 bytes + root).
MAX_TEMP_ROOT = 24

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_NO_SPACE = re.compile(r"^\S+$")


class SlurmError(ReconError):
    """A Slurm command is missing or answered an error; the message says what to do."""


# sbatch --time's formats (man sbatch): minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds; "UNLIMITED"/"INFINITE" where the partition allows it.
_SLURM_TIME = re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|(?i:unlimited|infinite))$")


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
    mlflow_server: bool = knob(False, "start an MLflow tracking server on the head node for the job's runs (its "
                               "MLFLOW_TRACKING_URI), stopped when the job ends; the runs stay in mlflow_store "
                               "and mlflow_artifacts, to browse with `recon ui` afterwards")
    mlflow_store: Optional[str] = knob(None, "the server's backend store: sqlite:///PATH on a disk the head node and "
                                       "you share, or a database URI without a password (e.g. postgresql://me@db/"
                                       "mlflow; the database client reads the password from its own file, "
                                       "~/.pgpass); default: sqlite:///<log_dir>/mlflow.db")
    mlflow_artifacts: Optional[str] = knob(None, "where the server keeps artifacts (a shared path, s3://, gs://); "
                                           "default: <storage>/mlflow-artifacts, else <log_dir>/mlflow-artifacts")
    mlflow_port: int = knob(5000, "symmetric mode: the MLflow server's port on the head node (shared mode takes "
                            f"port {MLFLOW_OFFSET} of the job's block)", ge=1, le=65535)

    def check(self) -> None:
        super().check()
        if not _SAFE_NAME.match(self.job_name):
            raise ConfigError("job_name", f"letters, digits, '.', '_' and '-' only (it names files), got {self.job_name!r}")
        for name in ("mem", "partition", "account", "time", "workdir", "script_dir", "log_dir", "ray_temp_root"):
            value = getattr(self, name)
            if value is not None and not _NO_SPACE.match(value):
                raise ConfigError(name, f"no spaces or line breaks (it goes on an #SBATCH line or into a path Ray "
                                        f"uses), got {value!r}")
        if self.time is not None and not _SLURM_TIME.match(self.time):
            raise ConfigError("time", f"not a Slurm time limit: {self.time!r}; Slurm takes minutes, MM:SS, HH:MM:SS, "
                                      "D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED (e.g. 12:00:00 for 12 hours)")
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
        if self.mlflow_server and self.tracking_uri:
            raise ConfigError("mlflow_server", f"the job either starts its own MLflow server or logs to "
                                               f"tracking_uri {self.tracking_uri!r}: keep one")
        if not self.mlflow_server and (self.mlflow_store or self.mlflow_artifacts):
            raise ConfigError("mlflow_store" if self.mlflow_store else "mlflow_artifacts",
                              "only used by the job's own MLflow server: set mlflow_server too")
        from recon.orchestration.tracking.server import has_password

        for name in ("mlflow_store", "mlflow_artifacts", "tracking_uri", "storage"):
            value = getattr(self, name)
            if value and has_password(value):
                raise ConfigError(name, "holds a password, which would be written into the sbatch script (readable "
                                        "by anyone who can read its folder): leave it out and let the client read "
                                        "it from its own file (PostgreSQL: ~/.pgpass; MySQL: ~/.my.cnf)")

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

    def resolved_mlflow_store(self) -> str:
        """The server's backend store: ``mlflow_store`` (a relative SQLite path made absolute against workdir),
        else ``sqlite:///<log_dir>/mlflow.db``."""
        from recon.orchestration.tracking.uri import sqlite_path, sqlite_uri

        if not self.mlflow_store:
            return sqlite_uri(self.resolved_log_dir() / "mlflow.db")
        path = sqlite_path(self.mlflow_store)
        if path is not None and not path.is_absolute():
            return sqlite_uri(self.resolved_workdir() / path)
        return self.mlflow_store

    def resolved_mlflow_artifacts(self) -> str:
        """Where the server keeps artifacts: ``mlflow_artifacts``, else beside the storage, else the log dir."""
        value = self.mlflow_artifacts
        if value is None:
            if self.storage and "://" in self.storage:
                return self.storage.rstrip("/") + "/mlflow-artifacts"
            base = Path(self.storage).expanduser() if self.storage else self.resolved_log_dir()
            value = str(base / "mlflow-artifacts")
        if "://" in value:
            return value
        return str((self.resolved_workdir() / Path(value).expanduser()).resolve())

    def log_path(self, job_id: str) -> Path:
        """Where the job's output goes (the script's ``#SBATCH --output`` with %x and %j filled in)."""
        return self.resolved_log_dir() / f"{self.job_name}-{job_id}.out"

    def mlflow_log_path(self, job_id: str) -> Path:
        """Where the job's MLflow server writes its output (beside the job's own)."""
        return self.resolved_log_dir() / f"{self.job_name}-{job_id}.mlflow.log"
