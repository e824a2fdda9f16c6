"""Write this folder's manifests from recon's KubeRay renderer; the parameters below are their documentation.

    python deploy/kuberay/render.py           # rewrite rayjob-cpu.yaml, rayjob-gpu.yaml, raycluster-gpu.yaml, mlflow.yaml
    python deploy/kuberay/render.py --check   # exit 1 when a file differs from what the renderer makes

tests/test_kuberay.py runs the check, so the files never drift from the renderer. Change a
manifest here (and re-run), not in the YAML; for your own cluster, edit the lines marked CHANGE in a
copy, or render your own settings (``recon.orchestration.cluster.kuberay``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from recon.orchestration.cluster.kuberay import KubeRaySettings, render_raycluster, render_rayjob, to_yaml
from recon.orchestration.cluster.kuberay_mlflow import render_mlflow

HERE = Path(__file__).resolve().parent
GPU_TAINT = "nvidia.com/gpu:NoSchedule"  # the taint GPU node pools usually carry (GKE, EKS, AKS)

#: file -> (what to render, the settings that differ from KubeRaySettings' defaults)
MANIFESTS: dict[str, tuple[str, dict[str, Any]]] = {
    # The demo study on CPUs only: two 4-CPU workers (demo.yaml trains 2 trials at a time and CP on
    # 2 Ray Train workers); stopped after 4 hours whatever happens.
    "rayjob-cpu.yaml": ("rayjob", dict(
        name="recon-demo", command=("recon", "study", "run", "studies/demo.yaml"),
        workers=2, worker_cpus=4, worker_memory="8Gi", worker_gpus=0, head_cpus=2, head_memory="8Gi",
        active_deadline_seconds=4 * 3600)),
    # The paper-scale study: four one-GPU workers (the defaults), on GPU nodes, stopped after 3 days.
    "rayjob-gpu.yaml": ("rayjob", dict(
        name="recon-paper", command=("recon", "study", "run", "studies/paper.yaml"),
        tolerations=(GPU_TAINT,), active_deadline_seconds=3 * 24 * 3600)),
    # A long-lived GPU cluster to `recon submit` studies to through a port-forward.
    "raycluster-gpu.yaml": ("raycluster", dict(name="recon", tolerations=(GPU_TAINT,))),
}

#: The namespace's MLflow server (PersistentVolumeClaim, Deployment, Service) for the manifests above: the
#: Service every pod's MLFLOW_TRACKING_URI names, the same image, artifacts beside the same bucket.
MLFLOW_FILE = "mlflow.yaml"

#: placeholder values a user must replace, marked CHANGE in the written files.
CHANGE = (KubeRaySettings().image, KubeRaySettings().storage)


def _placeholder(line: str) -> bool:
    """An ``image:`` or env ``value:`` line holding a placeholder (never a line inside ``runtimeEnvYAML``'s
    block, where ``#`` would be text, not a comment)."""
    return line.lstrip().startswith(("image:", "value:", "- s3:")) and any(value in line for value in CHANGE)


def render(filename: str) -> str:
    """The text of one manifest file: a header naming its parameters, then the YAML."""
    kind, params = MANIFESTS[filename]
    settings = KubeRaySettings(**params)
    manifest = render_rayjob(settings) if kind == "rayjob" else render_raycluster(settings)
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    header = [f"# {filename}: rendered by deploy/kuberay/render.py (do not edit here: tests/test_kuberay.py",
              "# checks this file against the renderer). See deploy/kuberay/README.md.",
              f"# Settings: KubeRaySettings({shown})",
              "# CHANGE: the image (lines marked CHANGE) and the bucket: every my-recon-bucket, runtimeEnvYAML's too."]
    body = [line + "  # CHANGE" if _placeholder(line) else line for line in to_yaml(manifest).splitlines()]
    return "\n".join(header + body) + "\n"


def render_mlflow_file() -> str:
    """mlflow.yaml: the three objects of the namespace's MLflow server, as one multi-document file."""
    header = [f"# {MLFLOW_FILE}: rendered by deploy/kuberay/render.py from "
              "recon.orchestration.cluster.kuberay_mlflow (do not edit here).",
              "# The namespace's MLflow server: its runs in SQLite on a PersistentVolumeClaim, its artifacts in the",
              "# bucket. Apply once per namespace, before the RayJobs. CHANGE: the image and the bucket."]
    documents = [to_yaml(doc).rstrip("\n") for doc in render_mlflow(KubeRaySettings())]
    body = [line + "  # CHANGE" if _placeholder(line) else line for line in "\n---\n".join(documents).splitlines()]
    return "\n".join(header + body) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for filename in [*MANIFESTS, MLFLOW_FILE]:
        path = HERE / filename
        text = render_mlflow_file() if filename == MLFLOW_FILE else render(filename)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(filename)
        else:
            path.write_text(text)
    for filename in stale:
        print(f"{filename} differs from the renderer: python deploy/kuberay/render.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
