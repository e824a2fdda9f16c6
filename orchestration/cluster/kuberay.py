"""KubeRay manifests for recon: a ``RayJob`` per study, or a long-lived ``RayCluster``, from a few settings.

    from pathlib import Path
    from recon.orchestration.cluster.kuberay import CRD_FILES, KubeRaySettings, render_raycluster, render_rayjob, to_yaml
    from recon.orchestration.cluster.kuberay_submit import submit
    from recon.orchestration.cluster.kuberay_crd import validate

    settings = KubeRaySettings(name="recon-paper", image="ghcr.io/me/recon:0.1.0",
                               storage="s3://my-bucket/recon", tracking_uri="http://mlflow:5000",
                               workers=4, worker_gpus=1,
                               command=("recon", "study", "run", "studies/paper.yaml"))
    manifest = render_rayjob(settings)                       # a dict; render_raycluster for long-lived use
    print(to_yaml(manifest))                                 # hand-applicable YAML
    problems = validate(manifest, Path("../shared/kuberay") / CRD_FILES["RayJob"])   # [] when valid

    plan = submit(settings, dry_run=True, working_dir=None)  # image holds the code: kubectl apply -f -
    print(plan.describe())                                   # the manifest and the command; nothing runs
    plan = submit(settings, dry_run=False, working_dir=Path("."))   # code travels: kubectl ray job submit
    raise SystemExit(plan.returncode)                        # --working-dir . (InteractiveMode)

What every rendered pod gets (head and workers alike):

* token authentication: ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` read from the Kubernetes
  Secret :attr:`KubeRaySettings.token_secret` (key ``auth_token``) through ``valueFrom.secretKeyRef``;
  the token is never written into a manifest or a job's runtime env. ``authOptions`` names the same
  Secret, so the operator uses it too (its dashboard client, the submitter pod, its init containers)
  instead of generating its own;
* ``RECON_STORAGE`` and ``MLFLOW_TRACKING_URI``, as ``cluster.yaml`` gives every ``ray start``, so
  every driver, trial and Train worker inherits them;
* the telemetry opt-outs recon gives every process it starts (``tracking.OFFLINE_ENV``);
* ``/dev/shm`` in memory (Ray's object store and torch's data loaders want more than a container's
  64 MB default).

The entrypoint is the recon command as given: it reads ``MLFLOW_TRACKING_URI`` and ``RECON_STORAGE`` from
the pods' environment, as every recon command does. GPU shapes request ``nvidia.com/gpu`` and set ``num-gpus`` in ``rayStartParams``; CPU shapes do neither.
The head gets ``num-cpus: 0``: it runs the GCS, the dashboard and the study driver, and Ray schedules
no trial there, so trials land on the shape that was sized for them. MLflow is *not* in the Ray
cluster: a RayJob's cluster is deleted when the job ends, so the tracking server must outlive it
(``kuberay_mlflow`` renders one for the namespace: ``deploy/kuberay/mlflow.yaml``).
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlsplit

import yaml

from recon.core.config import Config, ConfigError, knob
from recon.orchestration.tracking.uri import is_remote

API_VERSION = "ray.io/v1"
#: KubeRay CRD file (as in ray-project/kuberay ray-operator/config/crd/bases) of each kind rendered here.
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode")
INTERACTIVE = "InteractiveMode"
#: The key KubeRay reads the token from in a Secret named by ``authOptions.secretName``.
TOKEN_KEY = "auth_token"
#: The Ray version recon is tested with (the same pin as cluster.yaml; tests compare it with Ray's).
RAY_VERSION = "2.60.0"
#: The MLflow server's Service in the namespace (deploy/kuberay/README.md starts one).
DEFAULT_TRACKING_URI = "http://mlflow:5000"
TRACKING_FLAG = "--tracking-uri"
#: Ray's GCS refuses a job package of 512 MiB or more (its gRPC message limit); the working dir is
#: zipped uncompressed, so 500 MiB of files leaves room for the zip's own headers.
MAX_WORKING_DIR_BYTES = 500 * 1024 * 1024
# KubeRay's name limits (ray-operator/controllers/ray/utils/constant.go): the cluster's Services and
# Pods are named after it, and a RayJob's cluster adds a 6-character suffix.
MAX_NAME = {"RayCluster": 53, "RayJob": 47}
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABELS = {"app.kubernetes.io/name": "recon", "app.kubernetes.io/managed-by": "recon"}
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

KUBECTL_MISSING = (
    "kubectl is not on PATH: recon rendered the KubeRay manifest but needs kubectl to send it to your "
    "Kubernetes cluster. Install kubectl (https://kubernetes.io/docs/tasks/tools/, or your cloud's SDK: "
    "`gcloud components install kubectl`, `az aks install-cli`), point it at the cluster "
    "(`kubectl config current-context`), and for --working-dir add the KubeRay plugin "
    "(`kubectl krew install ray`). Without kubectl, --dry-run prints the manifest and the kubectl "
    "command, to apply from a machine that has it.")
PLUGIN_MISSING = (
    "the KubeRay kubectl plugin (kubectl-ray) is not on PATH: sending the working directory with the job "
    "needs `kubectl ray job submit`. Install it with `kubectl krew install ray` (or the kubectl-ray "
    "binary from a KubeRay release), or build an image holding the code and submit without a working "
    "directory (kubectl apply); --dry-run prints the manifest and the command without either.")


@dataclass
class KubeRaySettings(Config):
    """What a KubeRay manifest for recon is made of; every default lives here and nowhere else.

    The defaults run ``studies/paper.yaml``: four one-GPU workers, each with room for a 4-CPU trial
    (its ``ray.cpus_per_trial``) and CP pre-training on one Ray Train worker per GPU.
    """

    name: str = knob("recon-study", "name of the RayJob / RayCluster (DNS-1035 label, at most 47 characters)")
    namespace: str = knob("recon", "Kubernetes namespace of the RayJob / RayCluster and its pods")
    image: str = knob("registry.example.com/recon:0.1.0", "image with recon installed, for head and workers "
                      "(CHANGE: build one as deploy/kuberay/README.md shows)")
    ray_version: str = knob(RAY_VERSION, "Ray version inside the image (token auth needs 2.52 or later)")
    command: tuple[str, ...] = knob(("recon", "study", "run", "studies/paper.yaml"),
                                    "the recon command the job runs (its entrypoint)")
    workers: int = knob(4, "worker pods (a fixed size: replicas = minReplicas = maxReplicas)", ge=1)
    worker_cpus: int = knob(6, "CPUs per worker pod (request = limit)", ge=1)
    worker_memory: str = knob("28Gi", "memory per worker pod (a Kubernetes quantity; request = limit)")
    worker_gpus: int = knob(1, "NVIDIA GPUs per worker pod; 0 makes a CPU-only shape", ge=0)
    head_cpus: int = knob(4, "CPUs of the head pod (GCS, dashboard, study driver; no trial runs there)", ge=1)
    head_memory: str = knob("16Gi", "memory of the head pod (a Kubernetes quantity)")
    head_gpus: int = knob(0, "NVIDIA GPUs of the head pod (the driver needs none)", ge=0)
    storage: str = knob("s3://my-recon-bucket/recon", "RECON_STORAGE: a URI every pod reaches, s3:// or gs:// "
                        "(CHANGE; pods share no disk)")
    tracking_uri: str = knob(DEFAULT_TRACKING_URI, "MLFLOW_TRACKING_URI: an MLflow server outside the Ray "
                             "cluster (a RayJob's cluster is deleted when the job ends)")
    token_secret: str = knob("recon-ray-token", f"Secret holding the Ray auth token under key '{TOKEN_KEY}'")
    service_account: Optional[str] = knob(None, "service account of every pod (cloud credentials for the "
                                          "storage, e.g. IRSA or Workload Identity); default: the namespace's")
    submission_mode: str = knob("K8sJobMode", "how KubeRay submits a RayJob: K8sJobMode (a submitter pod), "
                                "HTTPMode (the operator), InteractiveMode (you, with kubectl ray job submit)",
                                choices=SUBMISSION_MODES)
    ttl_seconds: int = knob(600, "seconds a finished RayJob's cluster stays (to read its logs) before deletion",
                            ge=0)
    active_deadline_seconds: Optional[int] = knob(None, "stop the RayJob after this many seconds (a cost "
                                                  "ceiling); default: no deadline", ge=1)
    backoff_limit: int = knob(0, "RayJob retries, each on a new cluster (a study resumes where it stopped); "
                              "must be 0 in InteractiveMode", ge=0)
    node_selector: dict[str, str] = knob(factory=dict, help="node labels worker pods must match, e.g. "
                                         "{\"cloud.google.com/gke-accelerator\": \"nvidia-l4\"}")
    tolerations: tuple[str, ...] = knob((), "taints worker pods tolerate, each KEY[=VALUE][:EFFECT] "
                                        "(e.g. nvidia.com/gpu:NoSchedule)")

    def __post_init__(self) -> None:
        self.command = tuple(self.command)
        self.tolerations = tuple(self.tolerations)
        super().__post_init__()
        if not DNS1035_LABEL.match(self.name) or len(self.name) > MAX_NAME["RayJob"]:
            raise ConfigError("name", f"must be a DNS-1035 label (lower-case letters, digits, '-'; a letter "
                                      f"first) of at most {MAX_NAME['RayJob']} characters, got {self.name!r}")
        if not self.command:
            raise ConfigError("command", "give the recon command to run, e.g. recon study run studies/paper.yaml")
        given = _flag_value(self.command, TRACKING_FLAG)
        if given is not None and given != self.tracking_uri:
            raise ConfigError("command", f"{TRACKING_FLAG} {given} differs from tracking_uri {self.tracking_uri}: "
                                         f"the study would log where the pods do not point")
        if "://" not in self.storage:
            raise ConfigError("storage", f"pods share no disk: give a URI every pod reaches (s3://, gs://), "
                                         f"got {self.storage!r}")
        if not is_remote(self.tracking_uri):
            raise ConfigError("tracking_uri", f"give an MLflow server (http(s)://...): a local store in a pod "
                                              f"vanishes with it, got {self.tracking_uri!r}")
        for field in ("storage", "tracking_uri"):
            if urlsplit(getattr(self, field)).password is not None:
                raise ConfigError(field, "holds a password: manifests and runtime envs are readable by anyone "
                                         "who can list them; give credentials to the pods through a Secret or "
                                         "the service account instead")
        for item in self.tolerations:
            toleration(item)  # raises on a malformed one, naming it


def _flag_value(argv: Sequence[str], flag: str) -> Optional[str]:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``), None when absent."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


# ----------------------------------------------------------------------------------------- rendering


def toleration(spec: str) -> dict[str, str]:
    """``KEY[=VALUE][:EFFECT]`` (kubectl taint's syntax) as a pod toleration; no value means any value."""
    rest, _, effect = spec.rpartition(":") if ":" in spec else (spec, "", "")
    key, eq, value = rest.partition("=")
    if not key or (effect and effect not in TOLERATION_EFFECTS):
        raise ConfigError("tolerations", f"{spec!r} is not KEY[=VALUE][:EFFECT] with EFFECT one of "
                                         f"{', '.join(TOLERATION_EFFECTS)}")
    out = {"key": key, "operator": "Equal" if eq else "Exists"}
    if eq:
        out["value"] = value
    if effect:
        out["effect"] = effect
    return out


def telemetry_env() -> dict[str, str]:
    """recon's telemetry opt-outs, as defined once in ``tracking.OFFLINE_ENV``.

    Imported here, not at module level: ``tracking`` pulls in torch, and rendering needs neither.
    recon's values, not this shell's: a manifest must not depend on who renders it.
    """
    from recon.core.privacy import OFFLINE_ENV

    return dict(OFFLINE_ENV)


def container_env(settings: KubeRaySettings) -> list[dict[str, Any]]:
    """The environment of every Ray container: auth (token from the Secret), storage, tracking, telemetry."""
    env: list[dict[str, Any]] = [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN",
         "valueFrom": {"secretKeyRef": {"name": settings.token_secret, "key": TOKEN_KEY}}},
        {"name": "RECON_STORAGE", "value": settings.storage},
        {"name": "MLFLOW_TRACKING_URI", "value": settings.tracking_uri},
    ]
    env += [{"name": name, "value": value} for name, value in telemetry_env().items()]
    return env


def _quantities(cpus: int, memory: str, gpus: int) -> dict[str, str]:
    out = {"cpu": str(cpus), "memory": memory}
    if gpus:
        out["nvidia.com/gpu"] = str(gpus)
    return out


def _pod_template(settings: KubeRaySettings, *, head: bool) -> dict[str, Any]:
    """A head or worker pod: one Ray container (KubeRay's index 0), requests = limits, /dev/shm in memory."""
    cpus, memory, gpus = ((settings.head_cpus, settings.head_memory, settings.head_gpus) if head else
                          (settings.worker_cpus, settings.worker_memory, settings.worker_gpus))
    resources = _quantities(cpus, memory, gpus)
    container = {"name": "ray-head" if head else "ray-worker", "image": settings.image,
                 "imagePullPolicy": "IfNotPresent", "env": container_env(settings),
                 "resources": {"requests": dict(resources), "limits": dict(resources)},
                 "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    spec: dict[str, Any] = {"containers": [container], "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]}
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if not head and settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if not head and settings.tolerations:
        spec["tolerations"] = [toleration(t) for t in settings.tolerations]
    return {"metadata": {"labels": dict(LABELS)}, "spec": spec}


def _ray_start_params(gpus: int, *, head: bool) -> dict[str, str]:
    params = {"num-cpus": "0"} if head else {}
    if gpus:
        params["num-gpus"] = str(gpus)
    return params


def raycluster_spec(settings: KubeRaySettings) -> dict[str, Any]:
    """The ``RayClusterSpec`` shared by :func:`render_raycluster` and a RayJob's ``rayClusterSpec``."""
    group = "gpu-workers" if settings.worker_gpus else "cpu-workers"
    return {
        "rayVersion": settings.ray_version,
        "authOptions": {"mode": "token", "secretName": settings.token_secret},
        "headGroupSpec": {"rayStartParams": _ray_start_params(settings.head_gpus, head=True),
                          "template": _pod_template(settings, head=True)},
        "workerGroupSpecs": [{"groupName": group, "replicas": settings.workers,
                              "minReplicas": settings.workers, "maxReplicas": settings.workers,
                              "rayStartParams": _ray_start_params(settings.worker_gpus, head=False),
                              "template": _pod_template(settings, head=False)}],
    }


def job_runtime_env(settings: KubeRaySettings, *, interactive: bool) -> dict[str, Any]:
    """The job's runtime env: where it stores and tracks, plus (InteractiveMode) what the upload leaves out.

    Never a secret: runtime envs are shown by ``ray job list`` and the dashboard; pods hold the token.
    The excludes are ``recon submit``'s (:data:`recon.orchestration.cluster.jobs.WORKING_DIR_EXCLUDES`).
    """
    from recon.orchestration.cluster.job_outputs import SUBMITTED_ENV

    # SUBMITTED_ENV: the pod's disk goes with the RayJob, so the job's tables are kept in the storage too
    renv: dict[str, Any] = {"env_vars": {"RECON_STORAGE": settings.storage,
                                         "MLFLOW_TRACKING_URI": settings.tracking_uri, SUBMITTED_ENV: "kuberay"}}
    if interactive:
        from recon.orchestration.cluster.jobs import WORKING_DIR_EXCLUDES

        renv["excludes"] = list(WORKING_DIR_EXCLUDES)
    return renv


def _metadata(settings: KubeRaySettings) -> dict[str, Any]:
    return {"name": settings.name, "namespace": settings.namespace, "labels": dict(LABELS)}


def render_rayjob(settings: KubeRaySettings) -> dict[str, Any]:
    """A ``RayJob`` running ``settings.command`` on a cluster of its own, deleted ``ttl_seconds`` after it ends."""
    interactive = settings.submission_mode == INTERACTIVE
    if interactive and settings.backoff_limit:
        raise ConfigError("backoff_limit", "KubeRay refuses retries in InteractiveMode: set it to 0")
    spec: dict[str, Any] = {
        "entrypoint": shlex.join(settings.command),
        "runtimeEnvYAML": to_yaml(job_runtime_env(settings, interactive=interactive)),
        "submissionMode": settings.submission_mode,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": settings.ttl_seconds,
        "backoffLimit": settings.backoff_limit,
    }
    if settings.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = settings.active_deadline_seconds
    spec["rayClusterSpec"] = raycluster_spec(settings)
    return {"apiVersion": API_VERSION, "kind": "RayJob", "metadata": _metadata(settings), "spec": spec}


def render_raycluster(settings: KubeRaySettings) -> dict[str, Any]:
    """A long-lived ``RayCluster`` (``recon submit`` through a port-forward); ``command`` and the job fields unused."""
    return {"apiVersion": API_VERSION, "kind": "RayCluster", "metadata": _metadata(settings),
            "spec": raycluster_spec(settings)}


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (``runtimeEnvYAML``) and indented lists, as kubectl users write them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):  # noqa: D401 - PyYAML hook
        return super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def to_yaml(manifest: Mapping[str, Any]) -> str:
    """The manifest as YAML in the order it was built (``kubectl apply -f`` reads it as is)."""
    return yaml.dump(dict(manifest), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)

__all__ = ["KubeRaySettings", "render_rayjob", "render_raycluster", "raycluster_spec", "container_env",
           "job_runtime_env", "to_yaml", "CRD_FILES", "MAX_WORKING_DIR_BYTES", "RAY_VERSION"]
