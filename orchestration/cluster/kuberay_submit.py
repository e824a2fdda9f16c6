"""Submitting a rendered RayJob: ``kubectl apply`` when the image holds the code, ``kubectl ray job submit
--working-dir`` when the working directory travels (capped below the GCS's 512 MiB), or a dry run."""
from __future__ import annotations

import base64
import dataclasses
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional


from recon.core.errors import ReconError
from recon.orchestration.cluster.kuberay import INTERACTIVE, KUBECTL_MISSING, KubeRaySettings, MAX_WORKING_DIR_BYTES, PLUGIN_MISSING, TOKEN_KEY, render_rayjob, to_yaml


# ---------------------------------------------------------------------------------------- submission


@dataclass(frozen=True)
class Submission:
    """A RayJob and the kubectl command that submits it; ``returncode`` is set once it has run."""

    manifest: dict[str, Any]
    argv: tuple[str, ...]
    stdin: Optional[str] = None          # the manifest, for ``kubectl apply -f -``
    manifest_file: Optional[Path] = None  # the manifest's file, for ``kubectl ray job submit -f``
    working_dir_bytes: Optional[int] = None
    returncode: Optional[int] = None

    def follow_hint(self) -> str:
        """How to watch the job once it is submitted."""
        meta = self.manifest["metadata"]
        ns, name = shlex.quote(meta["namespace"]), shlex.quote(meta["name"])
        mode = self.manifest["spec"]["submissionMode"]
        if mode == INTERACTIVE:
            return "kubectl ray job submit streams the job's logs until it ends"
        if mode == "K8sJobMode":
            return f"kubectl -n {ns} logs -f job/{name}    # the submitter pod follows the job's logs"
        return f"kubectl -n {ns} get rayjob {name} -w    # HTTPMode: status here, logs via the dashboard"

    def describe(self) -> str:
        """The manifest and the command, as ``--dry-run`` prints them."""
        lines = [f"# RayJob {self.manifest['metadata']['name']} in namespace "
                 f"{self.manifest['metadata']['namespace']} ({self.manifest['spec']['submissionMode']})",
                 to_yaml(self.manifest).rstrip()]
        if self.manifest_file is not None:
            ns, secret = self.manifest["metadata"]["namespace"], \
                self.manifest["spec"]["rayClusterSpec"]["authOptions"]["secretName"]
            lines += [f"# save the manifest above as {self.manifest_file}, then, with the cluster's token in "
                      f"this shell (the upload is a `ray job submit` from here):",
                      f"#   export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=\"$(kubectl -n {shlex.quote(ns)} get secret "
                      f"{shlex.quote(secret)} -o jsonpath='{{.data.{TOKEN_KEY}}}' | base64 -d)\"",
                      f"#   {shlex.join(self.argv)}"]
            if self.working_dir_bytes is not None:
                lines.append(f"# uploads {_mib(self.working_dir_bytes)} of the working directory "
                             f"(limit {_mib(MAX_WORKING_DIR_BYTES)})")
        else:
            lines.append(f"# apply with (the manifest above on stdin):\n#   {shlex.join(self.argv)}")
        lines.append(f"# follow: {self.follow_hint()}")
        return "\n".join(lines) + "\n"


def _mib(n: int) -> str:
    return f"{n / 1024 ** 2:,.1f} MiB"


def check_working_dir(working_dir: str | os.PathLike) -> int:
    """Bytes the working directory would upload (``recon submit``'s excludes); refuse over the GCS cap.

    Counts what Ray would zip (:func:`recon.orchestration.cluster.jobs.upload_files`), so data, runs, MLflow
    stores, weights and ``.gitignore``'d files excluded from the upload do not count against it.
    """
    from recon.orchestration.cluster.jobs import upload_files

    files = upload_files(working_dir)
    total = sum(size for _, size in files)
    if total > MAX_WORKING_DIR_BYTES:
        root = Path(working_dir).expanduser().resolve()
        largest = sorted(files, key=lambda f: f[1], reverse=True)[:5]
        listing = ", ".join(f"{path.relative_to(root)} ({_mib(size)})" for path, size in largest)
        raise ReconError(
            f"the working directory {root} would upload {_mib(total)}, more than the {_mib(MAX_WORKING_DIR_BYTES)} "
            f"a Ray job package may hold (the GCS refuses it). Largest files: {listing}. Keep data and "
            f"outputs out of it (.gitignore or .rayignore; datasets belong in RECON_STORAGE), or build an "
            f"image holding the code and submit without a working directory.")
    return total


def _token_env(settings: KubeRaySettings) -> dict[str, str]:
    """This environment plus the cluster's token for the local ``ray job submit`` (never on a command line).

    A token already in the shell (``RAY_AUTH_TOKEN``) wins; otherwise it is read from the Secret the
    pods use, so the upload authenticates against the cluster it creates.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env
    result = subprocess.run(["kubectl", "-n", settings.namespace, "get", "secret", settings.token_secret,
                             "-o", f"jsonpath={{.data.{TOKEN_KEY}}}"], capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip():
        raise ReconError(
            f"cannot read the Ray auth token from Secret {settings.namespace}/{settings.token_secret} "
            f"(key {TOKEN_KEY}): {result.stderr.strip() or 'empty'}. Create it first: kubectl -n "
            f"{settings.namespace} create secret generic {settings.token_secret} "
            f"--from-file={TOKEN_KEY}=$HOME/.ray/auth_token, or export RAY_AUTH_TOKEN")
    env["RAY_AUTH_TOKEN"] = base64.b64decode(result.stdout.strip()).decode().strip()
    return env


def submit(settings: KubeRaySettings, dry_run: bool, working_dir: Path | None) -> Submission:
    """Build (``dry_run``) or run the kubectl command that submits ``settings`` as a RayJob.

    Without ``working_dir`` the image must hold the code: ``kubectl apply -f -`` with the manifest on
    stdin, submitted as ``settings.submission_mode`` says. With it, the directory travels with the
    job: ``kubectl ray job submit -n NS -f MANIFEST --working-dir DIR -- COMMAND`` on an
    InteractiveMode RayJob, after checking the upload fits (:func:`check_working_dir`). ``dry_run``
    runs nothing (kubectl need not be installed); print :meth:`Submission.describe`.
    """
    interactive = working_dir is not None
    if interactive:
        settings = dataclasses.replace(settings, submission_mode=INTERACTIVE)
    elif settings.submission_mode == INTERACTIVE:
        raise ReconError("InteractiveMode submits the job from this machine: give the working directory "
                         "to upload, or use K8sJobMode with an image that holds the code")
    manifest = render_rayjob(settings)
    if not interactive:
        plan = Submission(manifest, ("kubectl", "apply", "-f", "-"), stdin=to_yaml(manifest))
        return plan if dry_run else _run(plan, env=None)
    wd = Path(working_dir).expanduser().resolve()
    size = check_working_dir(wd)

    def argv(file: Path) -> tuple[str, ...]:
        return ("kubectl", "ray", "job", "submit", "-n", settings.namespace, "-f", str(file),
                "--working-dir", str(wd), "--", *settings.command)

    if dry_run:
        file = Path(f"{settings.name}.rayjob.yaml")
        return Submission(manifest, argv(file), manifest_file=file, working_dir_bytes=size)
    _require_kubectl(plugin=True)
    env = _token_env(settings)
    with tempfile.TemporaryDirectory(prefix="recon-kuberay-") as tmp:  # outside the uploaded directory
        file = Path(tmp) / f"{settings.name}.rayjob.yaml"
        file.write_text(to_yaml(manifest))
        return _run(Submission(manifest, argv(file), manifest_file=file, working_dir_bytes=size), env=env)


def _require_kubectl(*, plugin: bool) -> None:
    if shutil.which("kubectl") is None:
        raise ReconError(KUBECTL_MISSING)
    if plugin and shutil.which("kubectl-ray") is None:
        raise ReconError(PLUGIN_MISSING)


def _run(plan: Submission, env: Optional[Mapping[str, str]]) -> Submission:
    """Run the plan's kubectl command, its output going straight to the terminal."""
    _require_kubectl(plugin=plan.manifest_file is not None)
    result = subprocess.run(list(plan.argv), input=plan.stdin, text=True, env=dict(env) if env else None)
    return dataclasses.replace(plan, returncode=result.returncode)


__all__ = ["Submission", "submit", "check_working_dir"]
