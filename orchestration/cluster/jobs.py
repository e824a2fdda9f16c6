"""Submit recon commands to a Ray cluster as Ray Jobs, and follow them.

    job_id = submit(["recon", "study", "run", "studies/paper.yaml"],
                    address="http://HEAD:8265", storage="s3://bucket/recon",
                    tracking_uri="http://10.0.1.5:5000")
    for chunk in follow_logs(job_id, address=...): print(chunk, end="")

The project directory is uploaded as the job's ``working_dir`` (study YAML files, local configs),
without data, run outputs, MLflow stores, caches, ``.git`` or model weights (see
:data:`WORKING_DIR_EXCLUDES`; ``.gitignore`` is honoured too). Nothing is pip-installed for the job
by default: every node must have recon installed as the README does (``pip install -e .`` in the
node image or the cluster launcher's ``setup_commands``), so jobs start in seconds and run the same
code as the cluster was built with. ``pip=[...]`` adds a runtime-env pip list when you need one.

The job's entrypoint runs on the head node unless ``entrypoint_resources`` /
``entrypoint_num_cpus`` ask for something only workers have. It gets ``RECON_STORAGE``,
``MLFLOW_TRACKING_URI`` and ``RAY_AUTH_MODE`` as environment variables, and ``RECON_SUBMITTED``: the job's
working dir is Ray's temporary copy, so recon puts what must outlive the job in the storage instead
(:mod:`recon.orchestration.cluster.job_outputs`). The auth *token* is never
put into the runtime env (runtime envs are stored in the GCS and shown by ``ray job list`` and the
dashboard): job drivers inherit it from the node they run on, like every Ray worker there.

Authentication: Ray 2.60 clusters started with a token require ``Authorization: Bearer <token>`` on
every dashboard/Jobs request. :func:`client` sends it when ``RAY_AUTH_MODE=token`` (Ray's own
behaviour) or when ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` names a token explicitly; a
``~/.ray/auth_token`` file is used only with ``RAY_AUTH_MODE=token``, never sent to an address
you did not opt in for.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from recon.core.errors import ReconError
from recon.orchestration.cluster.job_outputs import SUBMITTED_ENV, SUBMITTED_RAY_JOB

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"

#: gitignore-style patterns (relative to the working dir) never uploaded with a job.
WORKING_DIR_EXCLUDES: tuple[str, ...] = (
    ".git/", "/data/", "/datasets/", "/runs/", "/outputs/", "mlruns/", "mlartifacts/",
    "*.db", "*.db-journal", "*.sqlite",
    "__pycache__/", ".pytest_cache/", ".cache/", ".recon-cache/", "*.egg-info/", ".venv/",
    "build/", "dist/", ".whl/",
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.onnx", "*.npy", "*.npz",
)

#: environment variables forwarded from the submitting shell to the job when they are set.
FORWARDED_ENV: tuple[str, ...] = ("RAY_AUTH_MODE", "RECON_DATA_DIR", "HF_ENDPOINT", "HF_HUB_OFFLINE")

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

try:  # the dashboard SDK raises this on 401/403 (not a RuntimeError)
    from ray.exceptions import AuthenticationError as _AuthError
except ImportError:  # pragma: no cover - older Ray
    class _AuthError(Exception):
        pass

_CLIENT_ERRORS = (ConnectionError, RuntimeError, ValueError, _AuthError)


def default_address() -> str:
    """``$RAY_ADDRESS`` when it is an http(s) Jobs address, else the local dashboard."""
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else DEFAULT_DASHBOARD


def _token() -> str | None:
    """The token to send: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH's file, or (only with
    RAY_AUTH_MODE=token) ~/.ray/auth_token -- the same order as Ray's token loader."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            return Path(path).expanduser().read_text().strip() or None
        except OSError as exc:
            raise ReconError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read: {exc}") from exc
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        default = Path.home() / ".ray" / "auth_token"
        if default.is_file():
            return default.read_text().strip() or None
    return None


def client(address: str | None = None):
    """A ``JobSubmissionClient`` for ``address`` (an http(s) dashboard URL), authenticated."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # pragma: no cover - ray[default] is a dependency
        raise ReconError("Ray Jobs need ray[default]: pip install 'ray[default]'") from exc

    address = address or default_address()
    if not address.startswith(("http://", "https://")):
        raise ReconError(f"--address must be the cluster's dashboard URL (http://HEAD:8265), "
                         f"not {address!r} (a GCS address such as HEAD:6379 is for ray.init)")
    token = _token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        # Ray prefers RAY_API_SERVER_ADDRESS / RAY_ADDRESS over the address it is given; the address
        # chosen here (flag, else $RAY_ADDRESS if http, else local) must win.
        with _env_removed("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            return JobSubmissionClient(address, headers=headers)
    except _CLIENT_ERRORS as exc:
        raise ReconError(_explain(exc, address)) from exc


@contextlib.contextmanager
def _env_removed(*names: str):
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _explain(exc: Exception, address: str) -> str:
    text = str(exc)
    if isinstance(exc, _AuthError) or "401" in text or "403" in text or "uthentication" in text:
        return (f"the Ray cluster at {address} refused the request: {text.splitlines()[0]} -- "
                f"set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the "
                f"cluster's token (`ray get-auth-token` on the head node)")
    return (f"cannot reach the Ray Jobs server at {address}: {text.splitlines()[0] if text else exc!r} "
            f"-- is the cluster up and the dashboard port forwarded (`ray dashboard cluster.yaml`)?")


def runtime_env(*, storage: str | None = None, tracking_uri: str | None = None,
                working_dir: str | os.PathLike | None = ".", env: Mapping[str, str] | None = None,
                pip: Sequence[str] | None = None,
                excludes: Sequence[str] = WORKING_DIR_EXCLUDES) -> dict:
    """The job's runtime env: working dir (minus :data:`WORKING_DIR_EXCLUDES`) and env vars."""
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env_vars[SUBMITTED_ENV] = SUBMITTED_RAY_JOB
    storage = storage or os.environ.get("RECON_STORAGE")
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if storage:
        env_vars["RECON_STORAGE"] = storage
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    env_vars.update(env or {})
    for secret in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        if secret in env_vars:
            raise ReconError(f"{secret} must not be passed to a job: runtime envs are readable by "
                             f"anyone who can list jobs; nodes already hold the cluster token")
    renv: dict = {"env_vars": env_vars}
    if working_dir is not None:
        wd = Path(working_dir).expanduser().resolve()
        if not wd.is_dir():
            raise ReconError(f"working dir {wd} is not a directory")
        renv["working_dir"] = str(wd)
        renv["excludes"] = list(excludes)
    if pip:
        renv["pip"] = list(pip)
    return renv


def upload_files(working_dir: str | os.PathLike,
                 excludes: Sequence[str] = WORKING_DIR_EXCLUDES) -> list[tuple[Path, int]]:
    """Every file a job's ``working_dir`` upload would carry, with its size in bytes.

    Selected by Ray's own walk over the directory (the one ``ray job submit`` zips with): Ray's
    default excludes, then ``excludes``, then ``.gitignore`` (unless
    ``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1``) and ``.rayignore`` files. Ray stores the package
    uncompressed, so the sizes add up to the upload's size; a caller can refuse a directory the GCS
    would refuse, before anything is created on a cluster.
    """
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(working_dir).expanduser().resolve()
    if not root.is_dir():
        raise ReconError(f"working dir {root} is not a directory")
    patterns = ray_constants.get_runtime_env_default_excludes() + list(excludes)
    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    found: list[tuple[Path, int]] = []

    def count(path: Path) -> None:
        if path.is_file():
            found.append((path, path.stat().st_size))

    # recon's logger: Ray's own logs each .gitignore it honours at INFO on stderr, for every count.
    _dir_travel(root, [_get_excludes(root, patterns)], count, include_gitignore=include_gitignore,
                logger=logging.getLogger(__name__))
    return found


def submit(entrypoint: Sequence[str] | str, *, address: str | None = None,
           storage: str | None = None, tracking_uri: str | None = None,
           working_dir: str | os.PathLike | None = ".", env: Mapping[str, str] | None = None,
           pip: Sequence[str] | None = None, submission_id: str | None = None,
           entrypoint_num_cpus: float | None = None, entrypoint_num_gpus: float | None = None,
           entrypoint_resources: Mapping[str, float] | None = None,
           metadata: Mapping[str, str] | None = None) -> str:
    """Submit ``entrypoint`` (argv list, or one shell string) as a Ray Job; returns the job id."""
    if isinstance(entrypoint, str):
        command = entrypoint
    else:
        if not entrypoint:
            raise ReconError("nothing to submit: give the command after `--`, "
                             "e.g. recon submit -- recon study run studies/paper.yaml")
        command = shlex.join(entrypoint)
    renv = runtime_env(storage=storage, tracking_uri=tracking_uri, working_dir=working_dir,
                       env=env, pip=pip)
    jc = client(address)
    try:
        return jc.submit_job(entrypoint=command, runtime_env=renv, submission_id=submission_id,
                             entrypoint_num_cpus=entrypoint_num_cpus,
                             entrypoint_num_gpus=entrypoint_num_gpus,
                             entrypoint_resources=dict(entrypoint_resources) if entrypoint_resources else None,
                             metadata={"submitted_by": "recon", **(metadata or {})})
    except _CLIENT_ERRORS as exc:
        raise ReconError(_explain(exc, address or default_address())) from exc


def _call(address: str | None, method: str, *args):
    jc = client(address)
    try:
        return getattr(jc, method)(*args)
    except _CLIENT_ERRORS as exc:
        text = str(exc)
        if "does not exist" in text or "404" in text:
            raise ReconError(f"no job {args[0]!r} on {address or default_address()}") from exc
        raise ReconError(_explain(exc, address or default_address())) from exc


def list_jobs(address: str | None = None) -> list:
    """Every job the cluster knows, newest first (``JobDetails``)."""
    jobs = _call(address, "list_jobs")
    return sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)


def info(job_id: str, address: str | None = None):
    """``JobDetails`` of one job (status, message, entrypoint, times)."""
    return _call(address, "get_job_info", job_id)


def status(job_id: str, address: str | None = None) -> str:
    """``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``."""
    return str(_call(address, "get_job_status", job_id).value)


def logs(job_id: str, address: str | None = None) -> str:
    """Everything the job's driver has printed so far."""
    return _call(address, "get_job_logs", job_id)


def stop(job_id: str, address: str | None = None) -> bool:
    """Ask the cluster to stop the job; ``True`` if it was running."""
    return bool(_call(address, "stop_job", job_id))


def follow_logs(job_id: str, address: str | None = None) -> Iterator[str]:
    """Stream the job's log chunks until it ends (``tail_job_logs`` over the Jobs websocket)."""
    jc = client(address)
    agen = jc.tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                chunk = loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
            except _CLIENT_ERRORS as exc:
                raise ReconError(_explain(exc, address or default_address())) from exc
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(agen.aclose())
        loop.close()


def wait(job_id: str, address: str | None = None, timeout_s: float = 600, poll_s: float = 1.0) -> str:
    """Poll until the job is terminal; returns its final status (``TimeoutError`` otherwise)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        st = status(job_id, address)
        if st in TERMINAL:
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {st} after {timeout_s:.0f}s")
        time.sleep(poll_s)
