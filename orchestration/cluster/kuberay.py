"""KubeRay manifests for recon: a ``RayJob`` per study, or a long-lived ``RayCluster``, from a few settings.

    from pathlib import Path
    from recon.orchestration.cluster.kuberay import (CRD_FILES, KubeRaySettings, render_raycluster,
                                                     render_rayjob, submit, to_yaml, validate)

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
(``deploy/kuberay/README.md`` shows one).
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlsplit

import yaml

from recon.core.config import Config, ConfigError, knob
from recon.core.errors import ReconError
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
    renv: dict[str, Any] = {"env_vars": {"RECON_STORAGE": settings.storage,
                                         "MLFLOW_TRACKING_URI": settings.tracking_uri}}
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


# ---------------------------------------------------------------------------------------- validation


@functools.lru_cache(maxsize=4)
def _crd(crd_path: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 20,000+ lines
    with open(crd_path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)


def _structural(schema: Any) -> Any:
    """A CRD's OpenAPI v3 schema as JSON Schema with the API server's semantics.

    Unknown fields are refused (``additionalProperties: false`` wherever ``properties`` are listed and
    ``x-kubernetes-preserve-unknown-fields`` is not set), as ``kubectl apply``'s strict field
    validation does; ``x-kubernetes-int-or-string`` accepts an integer or a string; ``nullable``
    admits null. Only schema positions are rewritten, never a property that happens to be called
    ``type`` or ``pattern``.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _structural(sub) for name, sub in out["properties"].items()}
    for key in ("items", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _structural(out[key])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [_structural(sub) for sub in out[key]]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def _list_type(validator: Any, list_type: str, instance: Any, schema: Mapping[str, Any]):
    """``x-kubernetes-list-type``: ``set`` items and ``map`` keys (a container's env names...) are unique."""
    from jsonschema import ValidationError

    if not isinstance(instance, list) or list_type not in ("set", "map"):
        return
    keys = schema.get("x-kubernetes-list-map-keys") or []
    seen: set[str] = set()
    for item in instance:
        if list_type == "map" and isinstance(item, dict):
            key = repr([item.get(k) for k in keys])
            what = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
        else:
            key = what = repr(item)
        if key in seen:
            yield ValidationError(f"duplicate entry ({what}): the API server keys this list by "
                                  f"{', '.join(keys) or 'value'}")
        seen.add(key)


@functools.lru_cache(maxsize=4)
def _validator(crd_path: str):
    from jsonschema import Draft4Validator, validators

    crd = _crd(crd_path)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    checker = validators.extend(Draft4Validator, {"x-kubernetes-list-type": _list_type})  # OpenAPI 3.0 ~ draft 4
    return checker(_structural(version["schema"]["openAPIV3Schema"]))


def _where(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(manifest)"


def validate(manifest: Mapping[str, Any], crd_path: str | Path) -> list[str]:
    """Problems of ``manifest`` against KubeRay's CRD at ``crd_path`` (v1), each located; ``[]`` when valid.

    Two layers, both offline: the CRD's OpenAPI schema (types, required and unknown fields, enums,
    quantity patterns, unique list keys), which the API server enforces on ``kubectl apply``; and
    :func:`operator_problems`, rules KubeRay's operator enforces only later, when it reconciles (a
    manifest that breaks them is accepted and then never runs). CEL rules
    (``x-kubernetes-validations``) are not evaluated; the manifests rendered here use none of the
    fields they guard.
    """
    crd = _crd(str(crd_path))
    kind = crd["spec"]["names"]["kind"]
    problems = []
    if manifest.get("apiVersion") != f"{crd['spec']['group']}/v1":
        problems.append(f"apiVersion: {manifest.get('apiVersion')!r} is not {crd['spec']['group']}/v1")
    if manifest.get("kind") != kind:
        problems.append(f"kind: {manifest.get('kind')!r} is not {kind} (the kind of {Path(crd_path).name})")
    errors = sorted(_validator(str(crd_path)).iter_errors(dict(manifest)),
                    key=lambda e: [str(p) for p in e.absolute_path])
    problems += [f"{_where(e.absolute_path)}: {_message(e)}" for e in errors]
    return problems + operator_problems(manifest)


def _message(error: Any) -> str:
    """jsonschema's message, except a quantity's: its regular expression tells a reader nothing."""
    if error.validator == "pattern" and error.schema.get("x-kubernetes-int-or-string"):
        return f"{error.instance!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)"
    return error.message


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def operator_problems(manifest: Mapping[str, Any]) -> list[str]:
    """KubeRay's own checks (ray-operator/controllers/ray/utils/validation.go) of what is rendered here."""
    problems = []
    kind = manifest.get("kind")
    meta = manifest.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not DNS1035_LABEL.match(name) or len(name) > MAX_NAME.get(kind, 53):
        problems.append(f"metadata.name: {name!r} must be a DNS-1035 label of at most "
                        f"{MAX_NAME.get(kind, 53)} characters for a {kind}")
    spec = manifest.get("spec") if isinstance(manifest.get("spec"), dict) else {}
    cluster, where = (spec.get("rayClusterSpec"), "spec.rayClusterSpec") if kind == "RayJob" else (spec, "spec")
    if isinstance(cluster, dict):
        auth = cluster.get("authOptions") or {}
        if isinstance(auth, dict) and auth.get("mode") == "token" and \
                _version_tuple(str(cluster.get("rayVersion", ""))) < (2, 52, 0):
            problems.append(f"{where}.rayVersion: token auth needs Ray 2.52.0 or later, got "
                            f"{cluster.get('rayVersion')!r}")
        autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
        for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
            lo, hi = group.get("minReplicas"), group.get("maxReplicas")
            if not autoscaling and (lo is None or hi is None):
                problems.append(f"{where}.workerGroupSpecs[{i}]: minReplicas and maxReplicas are both "
                                f"required without the autoscaler")
            elif isinstance(lo, int) and isinstance(hi, int) and lo > hi:
                problems.append(f"{where}.workerGroupSpecs[{i}]: minReplicas {lo} > maxReplicas {hi}")
    if kind == "RayJob":
        if spec.get("ttlSecondsAfterFinished", 0) and not spec.get("shutdownAfterJobFinishes"):
            problems.append("spec.ttlSecondsAfterFinished: needs shutdownAfterJobFinishes: true")
        if spec.get("submissionMode") == INTERACTIVE and spec.get("backoffLimit", 0):
            problems.append("spec.backoffLimit: must be 0 in InteractiveMode")
        if "activeDeadlineSeconds" in spec and not (isinstance(spec["activeDeadlineSeconds"], int)
                                                    and spec["activeDeadlineSeconds"] > 0):
            problems.append("spec.activeDeadlineSeconds: must be a positive integer")
        try:
            renv = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
            if not isinstance(renv, dict):
                problems.append("spec.runtimeEnvYAML: must be a YAML mapping")
        except yaml.YAMLError as exc:
            problems.append(f"spec.runtimeEnvYAML: not YAML: {exc}")
    return problems


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


__all__ = ["KubeRaySettings", "Submission", "render_rayjob", "render_raycluster", "raycluster_spec",
           "container_env", "job_runtime_env", "to_yaml", "validate", "operator_problems",
           "check_working_dir", "submit", "CRD_FILES", "MAX_WORKING_DIR_BYTES", "RAY_VERSION"]
