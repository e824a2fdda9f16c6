"""Launchers: how recon reaches a cluster.

The Ray cluster launcher (``cluster.yaml``, ``cluster-local.yaml``) and ``recon submit`` (Ray Jobs,
``recon.orchestration.jobs``) reach machines Ray starts itself; the modules here reach clusters
someone else schedules. :mod:`.kuberay` renders KubeRay ``RayJob`` / ``RayCluster`` manifests for
Kubernetes, checks them offline against KubeRay's CRD schemas and builds the ``kubectl`` command
that submits them. Each launcher is one module of plain functions over one settings dataclass, free
of Ray and MLflow imports at module level, so a manifest can be rendered where neither is installed.
"""
