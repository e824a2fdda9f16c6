"""KubeRay manifests: valid against KubeRay's own CRD schemas, safe by construction, and what deploy/ ships.

Validation is offline: the CRDs are byte-exact copies in ``../shared/kuberay`` (sha256 checked
against its README), and no Kubernetes cluster is needed. Submission is tested through dry runs and
a stand-in ``kubectl`` on PATH that records what it was given.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recon.core.config import ConfigError
from recon.core.errors import ReconError
from recon.orchestration.cluster import kuberay, kuberay_submit
from recon.orchestration.cluster.kuberay import CRD_FILES, MAX_WORKING_DIR_BYTES, KubeRaySettings, render_raycluster, render_rayjob, to_yaml
from recon.orchestration.cluster.kuberay_submit import submit
from recon.orchestration.cluster.kuberay_crd import validate
from recon.orchestration.cluster.jobs import WORKING_DIR_EXCLUDES

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT.parent / "shared" / "kuberay"
DEPLOY = ROOT / "deploy" / "kuberay"

SHAPES = {"cpu": dict(worker_gpus=0, worker_cpus=4, worker_memory="8Gi"),
          "gpu": dict(worker_gpus=1, tolerations=("nvidia.com/gpu:NoSchedule",),
                      node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"})}
RENDER = {"RayJob": render_rayjob, "RayCluster": render_raycluster}
TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_DISABLE_TELEMETRY": "1"}


def _crd(kind: str) -> Path:
    path = KUBERAY / CRD_FILES[kind]
    assert path.is_file(), f"{path} missing: the KubeRay CRDs live in ../shared/kuberay beside the repository"
    return path


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def _pod_templates(manifest: dict) -> list[dict]:
    spec = _cluster_spec(manifest)
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def _containers(manifest: dict) -> list[dict]:
    return [c for t in _pod_templates(manifest) for c in t["spec"]["containers"]]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


# ------------------------------------------------------------------------------- against the CRDs


def test_crds_are_the_pinned_copies():
    """The schemas validated against are the ones ../shared/kuberay/README.md names, byte for byte."""
    readme = (KUBERAY / "README.md").read_text()
    for kind, name in CRD_FILES.items():
        pinned = re.search(rf"\| {re.escape(name)} \|[^|]*\| ([0-9a-f]{{64}}) \|", readme).group(1)
        assert hashlib.sha256(_crd(kind).read_bytes()).hexdigest() == pinned


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", RENDER)
def test_rendered_manifest_validates_against_the_crd(kind, shape):
    manifest = RENDER[kind](KubeRaySettings(**SHAPES[shape]))
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    assert validate(manifest, _crd(kind)) == []
    # what kubectl reads is the same manifest
    assert validate(yaml.safe_load(to_yaml(manifest)), _crd(kind)) == []


def test_the_sample_from_kuberay_validates():
    """The validator accepts KubeRay's own sample: it is not merely strict where recon's output is."""
    sample = next(yaml.safe_load_all((KUBERAY / "ray-job.sample.yaml").read_text()))
    assert validate(sample, _crd("RayJob")) == []


def _set(path: str, value):
    def mutate(m):
        *parents, leaf = path.split(".")
        node = m
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return mutate


def _delete(path: str):
    def mutate(m):
        *parents, leaf = path.split(".")
        node = m
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[leaf]
    return mutate


WORKER = "spec.rayClusterSpec.workerGroupSpecs.0"
HEAD_CONTAINER = "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0"
BAD = {
    "wrong type": (_set(f"{WORKER}.replicas", "two"),
                   "spec.rayClusterSpec.workerGroupSpecs[0].replicas: 'two' is not of type 'integer'"),
    "unknown field": (_set(f"{WORKER}.replicaz", 2),
                      "spec.rayClusterSpec.workerGroupSpecs[0]: Additional properties are not allowed ('replicaz'"),
    "missing required field": (_delete(f"{HEAD_CONTAINER}.name"),
                               "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]: 'name' is a required"),
    "missing head group": (_delete("spec.rayClusterSpec.headGroupSpec"),
                           "spec.rayClusterSpec: 'headGroupSpec' is a required property"),
    "not a quantity": (_set(f"{HEAD_CONTAINER}.resources.limits.memory", "16GB"),
                       "containers[0].resources.limits.memory: '16GB' is not a Kubernetes quantity"),
    "enum": (_set("spec.rayClusterSpec.authOptions.mode", "tokens"),
             "spec.rayClusterSpec.authOptions.mode: 'tokens' is not one of ['disabled', 'token']"),
    "duplicate env": (lambda m: _containers(m)[0]["env"].append({"name": "RAY_AUTH_MODE", "value": "disabled"}),
                      "containers[0].env: duplicate entry (name='RAY_AUTH_MODE')"),
    "rayStartParams not strings": (_set(f"{WORKER}.rayStartParams.num-gpus", 1),
                                   "workerGroupSpecs[0].rayStartParams.num-gpus: 1 is not of type 'string'"),
    "wrong kind": (_set("kind", "RayCluster"), "kind: 'RayCluster' is not RayJob"),
    # KubeRay's operator rules: applied fine, then never run
    "name": (_set("metadata.name", "Recon_Paper"), "metadata.name: 'Recon_Paper' must be a DNS-1035 label"),
    "min > max replicas": (_set(f"{WORKER}.minReplicas", 9),
                           "spec.rayClusterSpec.workerGroupSpecs[0]: minReplicas 9 > maxReplicas 4"),
    "ttl without shutdown": (_set("spec.shutdownAfterJobFinishes", False),
                             "spec.ttlSecondsAfterFinished: needs shutdownAfterJobFinishes: true"),
    "old ray with token auth": (_set("spec.rayClusterSpec.rayVersion", "2.47.1"),
                                "spec.rayClusterSpec.rayVersion: token auth needs Ray 2.52.0 or later"),
    "interactive retries": (lambda m: m["spec"].update(submissionMode="InteractiveMode", backoffLimit=2),
                            "spec.backoffLimit: must be 0 in InteractiveMode"),
}


@pytest.mark.parametrize("case", BAD)
def test_validator_bites_with_a_located_message(case):
    mutate, expected = BAD[case]
    manifest = copy.deepcopy(render_rayjob(KubeRaySettings()))
    mutate(manifest)
    problems = validate(manifest, _crd("RayJob"))
    assert any(expected in p for p in problems), problems


def test_a_rayjob_is_not_a_raycluster():
    problems = validate(render_rayjob(KubeRaySettings()), _crd("RayCluster"))
    assert "kind: 'RayJob' is not RayCluster (the kind of ray.io_rayclusters.yaml)" in problems
    assert any(p.startswith("spec: Additional properties are not allowed") for p in problems)


# ------------------------------------------------------------------------------- what every pod gets


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", RENDER)
def test_env_in_every_container(kind, shape):
    settings = KubeRaySettings(storage="gs://lab/recon", tracking_uri="http://mlflow.tracking:5000", **SHAPES[shape])
    containers = _containers(RENDER[kind](settings))
    assert len(containers) == 2  # the head's and the worker group's Ray container
    for container in containers:
        env = _env(container)
        assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}
        assert env["RAY_AUTH_TOKEN"] == {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "recon-ray-token", "key": "auth_token"}}}
        assert env["RECON_STORAGE"]["value"] == "gs://lab/recon"
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.tracking:5000"
        for name, value in TELEMETRY_OFF.items():
            assert env[name]["value"] == value
        assert container["image"] == settings.image


def test_operator_uses_the_same_secret():
    """authOptions names the pods' Secret, so KubeRay generates no token of its own and its dashboard
    client and submitter pod authenticate with the token the pods have."""
    for kind, render in RENDER.items():
        spec = _cluster_spec(render(KubeRaySettings(token_secret="lab-token")))
        assert spec["authOptions"] == {"mode": "token", "secretName": "lab-token"}
        assert all(_env(c)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "lab-token"
                   for c in _containers(render(KubeRaySettings(token_secret="lab-token"))))


def test_no_secret_in_any_manifest_or_runtime_env(monkeypatch, tmp_path):
    from recon.core.privacy import secret_values

    token = "0123456789abcdef-cluster-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-not-a-real-key")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-hunter2")
    secrets = secret_values()
    assert token in secrets and len(secrets) >= 3
    (tmp_path / "studies").mkdir()
    texts = []
    for shape in SHAPES.values():
        settings = KubeRaySettings(**shape)
        for manifest in (render_rayjob(settings), render_raycluster(settings),
                         submit(settings, dry_run=True, working_dir=tmp_path).manifest):
            texts.append(to_yaml(manifest))
            for container in _containers(manifest):
                assert "value" not in _env(container)["RAY_AUTH_TOKEN"]
            if manifest["kind"] == "RayJob":
                renv = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])
                assert set(renv["env_vars"]) == {"RECON_STORAGE", "MLFLOW_TRACKING_URI", "RECON_SUBMITTED"}
        texts.append(submit(settings, dry_run=True, working_dir=tmp_path).describe())
        texts.append(submit(settings, dry_run=True, working_dir=None).describe())
    for text in texts:
        assert not [s for s in secrets if s in text]


@pytest.mark.parametrize("field, value, message", [
    ("tracking_uri", "http://admin:s3cret@mlflow:5000", "holds a password"),
    ("storage", "s3://AKIA:s3cret@bucket/recon", "holds a password"),
    ("storage", "/mnt/recon", "pods share no disk"),
    ("tracking_uri", "sqlite:///mlflow.db", "a local store in a pod vanishes"),
    ("name", "Recon_Paper", "DNS-1035 label"),
    ("name", "r" * 48, "at most 47"),
    ("tolerations", ("nvidia.com/gpu:Sometimes",), "KEY[=VALUE][:EFFECT]"),
    ("submission_mode", "SidecarMode", "must be one of"),
    ("workers", 0, ">= 1"),
    ("command", ("recon", "study", "run", "s.yaml", "--tracking-uri", "sqlite:///x.db"), "differs from tracking_uri"),
])
def test_settings_refuse_what_would_break_or_leak(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        KubeRaySettings(**{field: value})
    assert info.value.field == field


# ------------------------------------------------------------------------------- shapes and job fields


def test_gpu_shape_requests_gpus_and_tells_ray():
    manifest = render_rayjob(KubeRaySettings(workers=3, worker_gpus=2, **{k: v for k, v in SHAPES["gpu"].items()
                                                                         if k != "worker_gpus"}))
    spec = _cluster_spec(manifest)
    group = spec["workerGroupSpecs"][0]
    assert group["groupName"] == "gpu-workers"
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (3, 3, 3)
    assert group["rayStartParams"] == {"num-gpus": "2"}
    resources = group["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "2"
    pod = group["template"]["spec"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    # the head: no GPU, no trial (num-cpus 0), on ordinary nodes
    head = spec["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "0"}
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "tolerations" not in head["template"]["spec"] and "nodeSelector" not in head["template"]["spec"]


@pytest.mark.parametrize("kind", RENDER)
def test_cpu_shape_asks_for_no_gpu(kind):
    manifest = RENDER[kind](KubeRaySettings(**SHAPES["cpu"]))
    assert "nvidia.com/gpu" not in to_yaml(manifest) and "num-gpus" not in to_yaml(manifest)
    group = _cluster_spec(manifest)["workerGroupSpecs"][0]
    assert group["groupName"] == "cpu-workers" and group["rayStartParams"] == {}
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}


def test_rayjob_runs_the_recon_command_and_cleans_up():
    settings = KubeRaySettings(command=("recon", "study", "run", "studies/my study.yaml"), ttl_seconds=120,
                               active_deadline_seconds=3600, backoff_limit=1, submission_mode="HTTPMode",
                               service_account="recon-storage")
    spec = render_rayjob(settings)["spec"]
    assert spec["entrypoint"] == "recon study run 'studies/my study.yaml'"
    assert shlex.split(spec["entrypoint"])[:4] == list(settings.command)
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 120
    assert spec["activeDeadlineSeconds"] == 3600 and spec["backoffLimit"] == 1
    assert spec["submissionMode"] == "HTTPMode"
    assert all(t["spec"]["serviceAccountName"] == "recon-storage" for t in _pod_templates(render_rayjob(settings)))
    assert "activeDeadlineSeconds" not in render_rayjob(KubeRaySettings())["spec"]
    assert "excludes" not in yaml.safe_load(spec["runtimeEnvYAML"])  # nothing uploaded: the image holds the code


def test_study_commands_log_to_the_pods_tracking_server(monkeypatch, tmp_path):
    """The entrypoint is the command as given; the pods' MLFLOW_TRACKING_URI is where a study logs."""
    settings = KubeRaySettings(command=("recon", "study", "run", "s.yaml"), tracking_uri="http://mlflow.lab:5000")
    manifest = render_rayjob(settings)
    assert manifest["spec"]["entrypoint"] == "recon study run s.yaml"
    [env] = {_env(c)["MLFLOW_TRACKING_URI"]["value"] for c in _containers(manifest)}
    from recon.orchestration.study.spec import load_spec

    study = tmp_path / "s.yaml"
    study.write_text("name: s\nmodels: [{name: M}]\ngrids: [{datasets: [semeval]}]\n", encoding="utf-8")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    assert load_spec(study).resolved_tracking_uri() == "http://mlflow.lab:5000"


def test_raycluster_is_long_lived():
    manifest = render_raycluster(KubeRaySettings(name="recon"))
    assert set(manifest["spec"]) == {"rayVersion", "authOptions", "headGroupSpec", "workerGroupSpecs"}
    assert manifest["metadata"] == {"name": "recon", "namespace": "recon", "labels": kuberay.LABELS}


def test_settings_make_command_line_flags():
    """The settings are a recon Config: the CLI can generate its flags from them, as for every command."""
    import argparse

    from recon.orchestration.cli.flags import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    flags = add_config_arguments(parser, KubeRaySettings, prefix="k8s-", skip=("command",))
    args = parser.parse_args(["--k8s-workers", "3", "--k8s-worker-gpus", "0", "--k8s-node-selector", '{"pool": "cpu"}',
                              "--k8s-tolerations", "dedicated=recon:NoSchedule", "--k8s-submission-mode", "HTTPMode"])
    settings = config_from_args(KubeRaySettings, args, flags, command=("recon", "study", "run", "studies/demo.yaml"))
    assert (settings.workers, settings.worker_gpus, settings.submission_mode) == (3, 0, "HTTPMode")
    pod = _cluster_spec(render_rayjob(settings))["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "recon", "effect": "NoSchedule"}]
    with pytest.raises(SystemExit):
        parser.parse_args(["--k8s-submission-mode", "SidecarMode"])


def test_ray_version_is_the_one_recon_runs():
    import ray

    assert KubeRaySettings().ray_version == kuberay.RAY_VERSION == ray.__version__
    assert f"ray[default]=={kuberay.RAY_VERSION}" in (ROOT / "cluster.yaml").read_text()


def test_module_imports_neither_ray_nor_mlflow():
    probe = ("import sys, recon.orchestration.cluster.kuberay;"
             "print(sorted(m for m in ('ray', 'mlflow', 'torch', 'jsonschema') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------- submission


@pytest.fixture
def no_kubectl(monkeypatch, tmp_path):
    """An empty PATH (but this Python): whatever kubectl this machine has is out of reach."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    def refuse(*args, **kwargs):
        raise AssertionError(f"nothing may run in a dry run: {args}")

    monkeypatch.setattr(kuberay_submit.subprocess, "run", refuse)


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "studies").mkdir(parents=True)
    (project / "studies" / "demo.yaml").write_text("name: demo\n")
    return project


def test_dry_run_apply_with_an_image_holding_the_code(no_kubectl):
    settings = KubeRaySettings(name="recon-demo", command=("recon", "study", "run", "studies/demo.yaml"))
    plan = submit(settings, dry_run=True, working_dir=None)
    assert plan.argv == ("kubectl", "apply", "-f", "-") and plan.returncode is None
    assert yaml.safe_load(plan.stdin) == plan.manifest == render_rayjob(settings)
    text = plan.describe()
    assert "kubectl apply -f -" in text and "entrypoint: recon study run studies/demo.yaml" in text
    assert "kubectl -n recon logs -f job/recon-demo" in text
    assert validate(plan.manifest, _crd("RayJob")) == []


def test_dry_run_with_the_working_dir_travelling(no_kubectl, tmp_path):
    project = _project(tmp_path)
    settings = KubeRaySettings(name="recon-demo", command=("recon", "study", "run", "studies/demo.yaml"))
    plan = submit(settings, dry_run=True, working_dir=project)
    assert plan.argv == ("kubectl", "ray", "job", "submit", "-n", "recon", "-f", "recon-demo.rayjob.yaml",
                         "--working-dir", str(project.resolve()), "--", "recon", "study", "run", "studies/demo.yaml")
    spec = plan.manifest["spec"]
    assert spec["submissionMode"] == "InteractiveMode" and spec["backoffLimit"] == 0
    renv = yaml.safe_load(spec["runtimeEnvYAML"])
    assert renv["excludes"] == list(WORKING_DIR_EXCLUDES)  # recon submit's excludes, not a copy
    assert plan.working_dir_bytes == len("name: demo\n")
    text = plan.describe()
    assert "save the manifest above as recon-demo.rayjob.yaml" in text
    assert "get secret recon-ray-token -o jsonpath='{.data.auth_token}' | base64 -d" in text
    assert validate(plan.manifest, _crd("RayJob")) == []


def test_interactive_mode_needs_a_working_dir_and_no_retries(tmp_path):
    with pytest.raises(ReconError, match="give the working directory"):
        submit(KubeRaySettings(submission_mode="InteractiveMode"), dry_run=True, working_dir=None)
    with pytest.raises(ConfigError, match="backoff_limit"):
        submit(KubeRaySettings(backoff_limit=2), dry_run=True, working_dir=_project(tmp_path))


def _sparse(path: Path, size: int) -> None:
    """A file of ``size`` bytes that takes no disk space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)


def test_refuses_a_working_dir_over_the_gcs_cap(tmp_path):
    project = _project(tmp_path)
    _sparse(project / "corpus" / "wikidata.jsonl", MAX_WORKING_DIR_BYTES - 10)
    _sparse(project / "corpus" / "extra.jsonl", 20)
    with pytest.raises(ReconError) as info:
        submit(KubeRaySettings(), dry_run=True, working_dir=project)
    message = str(info.value)
    assert "more than the 500.0 MiB" in message and "corpus/wikidata.jsonl (500.0 MiB)" in message
    assert ".gitignore or .rayignore" in message


def test_only_what_would_be_uploaded_counts(tmp_path):
    """Outputs, weights, MLflow stores and .gitignore'd files stay home, so they do not count."""
    project = _project(tmp_path)
    big = MAX_WORKING_DIR_BYTES + 1
    for excluded in ("runs/study/trial.bin", "model.safetensors", "mlruns/0/meta.bin", "mlflow.db",
                     ".git/objects/pack.pack", "corpus/huge.jsonl"):
        _sparse(project / excluded, big)
    (project / ".gitignore").write_text("corpus/\n")
    plan = submit(KubeRaySettings(), dry_run=True, working_dir=project)
    assert plan.working_dir_bytes == len("name: demo\n") + len("corpus/\n")
    assert kuberay_submit.check_working_dir(project) == plan.working_dir_bytes


def test_says_clearly_when_kubectl_is_missing(no_kubectl, tmp_path):
    with pytest.raises(ReconError) as info:
        submit(KubeRaySettings(), dry_run=False, working_dir=None)
    message = str(info.value)
    assert message.startswith("kubectl is not on PATH") and "\n" not in message
    assert "https://kubernetes.io/docs/tasks/tools/" in message and "--dry-run prints the manifest" in message
    with pytest.raises(ReconError, match="kubectl is not on PATH"):
        submit(KubeRaySettings(), dry_run=False, working_dir=_project(tmp_path))


FAKE_KUBECTL = r'''#!{python}
"""Stand-in kubectl: records argv, stdin and whether a token reached it; answers `get secret`."""
import base64, json, os, sys
log = {log!r}
if sys.argv[1:4] == ["-n", "recon", "get"]:
    print(base64.b64encode(b"tok-from-the-secret-0123456789").decode(), end="")
    sys.exit(0)
record = {{"argv": sys.argv[1:], "stdin": sys.stdin.read() if sys.argv[-2:] == ["-f", "-"] else "",
           "token": os.environ.get("RAY_AUTH_TOKEN"), "mode": os.environ.get("RAY_AUTH_MODE")}}
with open(log, "a") as fh:
    fh.write(json.dumps(record) + "\n")
'''


@pytest.fixture
def fake_kubectl(monkeypatch, tmp_path):
    """kubectl and kubectl-ray on an otherwise empty PATH; returns the records of their calls."""
    import json

    bin_dir, log = tmp_path / "fake-bin", tmp_path / "kubectl.log"
    bin_dir.mkdir()
    for name in ("kubectl", "kubectl-ray"):
        (bin_dir / name).write_text(FAKE_KUBECTL.format(python=sys.executable, log=str(log)))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_apply_sends_the_manifest_on_stdin(fake_kubectl):
    settings = KubeRaySettings(name="recon-demo")
    plan = submit(settings, dry_run=False, working_dir=None)
    assert plan.returncode == 0
    [call] = fake_kubectl()
    assert call["argv"] == ["apply", "-f", "-"]
    assert yaml.safe_load(call["stdin"]) == render_rayjob(settings)


def test_working_dir_submission_reads_the_token_into_the_environment_only(fake_kubectl, tmp_path):
    project = _project(tmp_path)
    plan = submit(KubeRaySettings(name="recon-demo"), dry_run=False, working_dir=project)
    assert plan.returncode == 0
    [call] = fake_kubectl()
    argv = call["argv"]
    assert argv[:6] == ["ray", "job", "submit", "-n", "recon", "-f"]
    assert argv[7:] == ["--working-dir", str(project.resolve()), "--", "recon", "study", "run", "studies/paper.yaml"]
    manifest_file = Path(argv[6])
    assert not manifest_file.is_relative_to(project.resolve())  # the manifest is not uploaded with the code
    assert not manifest_file.exists()  # and does not outlive the submission
    assert call["token"] == "tok-from-the-secret-0123456789" and call["mode"] == "token"
    assert not any("tok-from-the-secret" in a for a in argv)


# ------------------------------------------------------------------------------- deploy/kuberay


def _render_script():
    spec = importlib.util.spec_from_file_location("deploy_kuberay_render", DEPLOY / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deploy_files_are_what_the_renderer_makes():
    script = _render_script()
    assert script.main(["--check"]) == 0, "run: python deploy/kuberay/render.py"
    assert set(script.MANIFESTS) | {script.MLFLOW_FILE} == {p.name for p in DEPLOY.glob("*.yaml")}
    for filename, (kind, params) in script.MANIFESTS.items():
        committed = (DEPLOY / filename).read_text()
        assert committed == script.render(filename)
        render = render_rayjob if kind == "rayjob" else render_raycluster
        manifest = yaml.safe_load(committed)
        assert manifest == render(KubeRaySettings(**params))  # the comments change nothing
        assert validate(manifest, _crd(manifest["kind"])) == []


def test_deploy_studies_log_where_the_pods_point():
    """Every container of a deployed study has the same MLflow server and storage in its environment."""
    script = _render_script()
    jobs = [yaml.safe_load((DEPLOY / f).read_text()) for f, (kind, _) in script.MANIFESTS.items() if kind == "rayjob"]
    assert len(jobs) == 2
    for manifest in jobs:
        assert shlex.split(manifest["spec"]["entrypoint"])[:3] == ["recon", "study", "run"]
        values = {(_env(c)["MLFLOW_TRACKING_URI"]["value"], _env(c)["RECON_STORAGE"]["value"])
                  for c in _containers(manifest)}
        assert len(values) == 1


def test_deploy_files_cover_cpu_gpu_and_long_lived():
    script = _render_script()
    shapes = {}
    for filename in script.MANIFESTS:
        manifest = yaml.safe_load((DEPLOY / filename).read_text())
        gpus = _cluster_spec(manifest)["workerGroupSpecs"][0]["rayStartParams"].get("num-gpus")
        shapes[filename] = (manifest["kind"], bool(gpus))
    assert sorted(shapes.values()) == [("RayCluster", True), ("RayJob", False), ("RayJob", True)]
    readme = (DEPLOY / "README.md").read_text()
    for filename in script.MANIFESTS:
        assert filename in readme
    assert "create secret generic recon-ray-token" in readme and "port-forward" in readme


def test_the_namespaces_mlflow_server_keeps_its_store_and_is_where_the_pods_log():
    """deploy/kuberay/mlflow.yaml: the Service the pods' MLFLOW_TRACKING_URI names, SQLite on the volume it
    mounts (it outlives the pod and every RayJob), artifacts beside the RayJobs' storage, telemetry off."""
    from recon.orchestration.cluster.kuberay_mlflow import render_mlflow, service_of

    script = _render_script()
    docs = list(yaml.safe_load_all((DEPLOY / script.MLFLOW_FILE).read_text()))
    assert docs == render_mlflow(KubeRaySettings())  # the comments change nothing
    claim, deployment, service = docs
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Deployment", "Service"]
    job = yaml.safe_load((DEPLOY / "rayjob-gpu.yaml").read_text())
    env = _env(_containers(job)[0])
    url = env["MLFLOW_TRACKING_URI"]["value"]
    assert url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    option = lambda name: command[command.index(name) + 1]  # noqa: E731
    mount = pod["containers"][0]["volumeMounts"][0]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert option("--backend-store-uri") == f"sqlite:///{mount['mountPath']}/mlflow.db"
    assert option("--artifacts-destination") == env["RECON_STORAGE"]["value"] + "/mlflow-artifacts"
    assert option("--workers") == "1" and deployment["spec"]["replicas"] == 1  # one writer of the SQLite file
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "mlflow:5000" in option("--allowed-hosts").split(",")
    assert {e["name"]: e["value"] for e in pod["containers"][0]["env"]} == TELEMETRY_OFF
    assert "mlflow.yaml" in (DEPLOY / "README.md").read_text()
    with pytest.raises(ConfigError, match="Service"):
        service_of(KubeRaySettings(tracking_uri="https://mlflow.example.com"))
