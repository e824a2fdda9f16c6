"""The MLflow tracking server of a Kubernetes namespace, beside its RayJobs: one Deployment, its Service, and
a PersistentVolumeClaim that holds the SQLite store.

A RayJob's Ray cluster is deleted when the job ends, so the server cannot live in it; this one outlives every
job and every restart of its own pod (the store is on the volume; artifacts go to the bucket,
``<storage>/mlflow-artifacts``, served by the server: clients need no bucket credentials). Its Service is the
host and port of :attr:`KubeRaySettings.tracking_uri` (``http://mlflow:5000``), which every rendered pod has
as ``MLFLOW_TRACKING_URI``; the options are recon's for every server it starts
(``recon.orchestration.tracking.server``).

    kubectl apply -f deploy/kuberay/mlflow.yaml        # rendered by deploy/kuberay/render.py
    kubectl -n recon port-forward svc/mlflow 5000:5000 # then http://localhost:5000

One replica and ``Recreate`` updates: an SQLite file has one writer. For a database instead, run the same
Deployment with ``--backend-store-uri`` from a Secret (not rendered here).
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from recon.core.config import ConfigError
from recon.orchestration.cluster.kuberay import DNS1035_LABEL, LABELS, KubeRaySettings, telemetry_env

STORE_MOUNT = "/mlflow"
STORE_CLAIM = "mlflow-store"
STORE_SIZE = "10Gi"
SERVER_RESOURCES = {"cpu": "1", "memory": "2Gi"}


def service_of(settings: KubeRaySettings) -> tuple[str, int]:
    """(Service name, port) that ``settings.tracking_uri`` names: ``http://mlflow:5000`` -> ("mlflow", 5000)."""
    parts = urlsplit(settings.tracking_uri)
    name = (parts.hostname or "").split(".")[0]
    if parts.scheme != "http" or not DNS1035_LABEL.match(name):
        raise ConfigError("tracking_uri", f"the namespace's MLflow server is reached as http://SERVICE[:PORT] "
                                          f"(a Service of this namespace), got {settings.tracking_uri!r}")
    return name, parts.port or 80


def render_mlflow(settings: KubeRaySettings, *, size: str = STORE_SIZE) -> list[dict[str, Any]]:
    """The PersistentVolumeClaim, Deployment and Service of the namespace's MLflow server (apply them once)."""
    from recon.orchestration.tracking.server import allowed_hosts, store_options

    name, port = service_of(settings)
    ns = settings.namespace
    labels = {**LABELS, "app": name}
    meta = lambda n: {"name": n, "namespace": ns, "labels": dict(labels)}  # noqa: E731
    store = f"sqlite:///{STORE_MOUNT}/mlflow.db"
    artifacts = settings.storage.rstrip("/") + "/mlflow-artifacts"
    hosts = ",".join([allowed_hosts(name, port), f"{name}.{ns}:{port}", f"{name}.{ns}.svc:{port}",
                      f"{name}.{ns}.svc.cluster.local:{port}"])
    container = {
        "name": "mlflow", "image": settings.image, "imagePullPolicy": "IfNotPresent",
        # 0.0.0.0 inside the pod is the pod network only, reached through the ClusterIP Service
        "command": ["mlflow", "server", *store_options(store, artifacts), "--host", "0.0.0.0", "--port", str(port),
                    "--allowed-hosts", hosts],
        "env": [{"name": k, "value": v} for k, v in telemetry_env().items()],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10},
        "resources": {"requests": dict(SERVER_RESOURCES), "limits": dict(SERVER_RESOURCES)},
        "volumeMounts": [{"name": "store", "mountPath": STORE_MOUNT}],
    }
    pod: dict[str, Any] = {"containers": [container],
                           # Ray's images run as ray (uid 1000, group users = 100): the volume is made theirs
                           "securityContext": {"fsGroup": 100},
                           "volumes": [{"name": "store", "persistentVolumeClaim": {"claimName": STORE_CLAIM}}]}
    if settings.service_account:  # bucket credentials (IRSA, Workload Identity), as the Ray pods get them
        pod["serviceAccountName"] = settings.service_account
    return [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(STORE_CLAIM),
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(name),
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": dict(labels)}, "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta(name),
         "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": port}]}},
    ]


__all__ = ["render_mlflow", "service_of", "STORE_MOUNT", "STORE_CLAIM", "STORE_SIZE"]
