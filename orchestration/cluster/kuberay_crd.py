"""Offline validation of KubeRay manifests: the CRD's OpenAPI v3 schema (with the Kubernetes extensions) as JSON
schema, plus the operator's own rules that the API server would accept and the job then never run."""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from recon.orchestration.cluster.kuberay import DNS1035_LABEL, INTERACTIVE, MAX_NAME



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


__all__ = ["validate", "operator_problems"]
