"""cluster.yaml / cluster-local.yaml: valid for Ray's own cluster launcher, and safe by construction.

Validation uses Ray's schema and default-filling (``ray.autoscaler._private.util``: the code
``ray up`` runs), offline: no cloud credentials are needed.
"""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [p for p in (ROOT / "cluster.yaml", ROOT / "cluster-local.yaml") if p.exists()]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


def _commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in config.get(k) or []]


def _flag(command: str, name: str) -> str:
    argv = shlex.split(command.replace("&&", " && ").replace(";", " ; "))
    return argv[argv.index(name) + 1]


def test_aws_config_is_present():
    assert (ROOT / "cluster.yaml").exists()
    assert _load(ROOT / "cluster.yaml")["provider"]["type"] == "aws"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_validates_against_ray_schema(path):
    full = _validate(_load(path))
    assert full["head_node_type"] in full["available_node_types"]


def test_schema_check_bites():
    from jsonschema import ValidationError

    bad = _load(ROOT / "cluster.yaml")
    bad["max_wrokers"] = 4
    with pytest.raises(ValidationError):
        _validate(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_mlflow_binds_to_private_ip_only(path):
    config = _load(path)
    cmds = _commands(config)
    mlflow = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(mlflow) == 1, "exactly one MLflow server, started with the head"
    line = mlflow[0]
    assert "0.0.0.0" not in line and "0.0.0.0" not in "\n".join(cmds)
    assert _flag(line, "--host") == "$RECON_HEAD_IP"
    # RECON_HEAD_IP is the private address: the launcher's RAY_HEAD_IP, else this host's first
    # (private) interface address -- never a public IP from cloud metadata.
    head_ip_def = [c for c in cmds if "RECON_HEAD_IP=" in c]
    assert head_ip_def and "${RAY_HEAD_IP:-$(hostname -I" in head_ip_def[0]
    assert "public" not in head_ip_def[0]
    allowed = _flag(line, "--allowed-hosts").split(",")
    assert "$RECON_HEAD_IP:5000" in allowed and "localhost:5000" in allowed
    assert "*" not in allowed
    assert _flag(line, "--backend-store-uri").startswith("sqlite:///$HOME/")
    assert _flag(line, "--artifacts-destination")


def test_aws_storage_and_tracking_for_every_job():
    config = _load(ROOT / "cluster.yaml")
    cmds = _commands(config)
    env_lines = "\n".join(c for c in cmds if "recon-cluster.env" in c and c.startswith("echo"))
    assert "RECON_STORAGE=s3://$RECON_BUCKET/recon" in env_lines
    assert "MLFLOW_TRACKING_URI=http://$RECON_HEAD_IP:5000" in env_lines
    mlflow = next(c for c in cmds if "mlflow server" in c)
    assert _flag(mlflow, "--artifacts-destination") == "s3://$RECON_BUCKET/mlflow"
    # every `ray start` sources the env file, so every job/trial/driver inherits the variables
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("source ~/.recon-cluster.env && ") for c in starts)
    assert "--dashboard-host=0.0.0.0" not in "\n".join(starts)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_token_auth_reaches_every_node(path):
    config = _load(path)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c for c in _commands(config))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_installs_recon_like_the_readme(path):
    readme = (ROOT / "README.md").read_text()
    torch_pin = re.search(r"pip install (torch==[\w.]+)", readme).group(1)
    config = _load(path)
    setup = [c.split("#")[0].strip() for c in config["setup_commands"]]
    assert f"pip install {torch_pin}" in setup
    assert "pip install -e ~/recon" in setup
    assert setup.index(f"pip install {torch_pin}") < setup.index("pip install -e ~/recon")
    import ray

    assert f"pip install 'ray[default]=={ray.__version__}'" in setup
    assert config["file_mounts"]["~/recon"] == "."
