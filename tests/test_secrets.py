"""Nothing leaves the machine, nothing secret reaches MLflow.

* Environment variables with secret-looking names (TOKEN, SECRET, PASSWORD, KEY, CREDENTIAL, ...) never
  reach MLflow params, tags, descriptions, dataset inputs or artifacts: a toy study whose trainer
  carelessly writes its whole environment into its result and a file is run with a fake API token and
  AWS key set, and every param, tag, input and artifact in the store is scanned for the values.
* MLflow's telemetry (and Ray's usage stats, the Hub's telemetry) are off in the processes recon
  starts, unless the user set the variables; ``recon ui`` binds to 127.0.0.1 unless told otherwise.
"""
import gzip
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from recon.core.privacy import OFFLINE_ENV, REDACTED, offline_env, redact, redacted_copy, secret_values

FIXTURES = Path(__file__).parent / "fixtures" / "studies"
TOKEN = "sup3rs3cret-api-token"
AWS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"

LEAKY = '''

def leaky(request, callbacks):
    """The toy trainer, careless: its whole environment goes into its result, notes and a file."""
    import os

    result = train(request, callbacks)
    result["env"] = dict(os.environ)
    result["notes"] = list(result.get("notes", [])) + [f"token was {os.environ.get('RECON_TEST_API_TOKEN')}"]
    (request.out_dir / "env.txt").write_text("\\n".join(f"{k}={v}" for k, v in os.environ.items()))
    (request.out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
'''


def test_secret_values_take_secret_names_and_skip_what_is_not_a_secret(tmp_path):
    env = {"RECON_TEST_API_TOKEN": TOKEN, "AWS_SECRET_ACCESS_KEY": AWS_KEY, "DB_PASSWORD": "hunter2hunter2",
           "GOOGLE_APPLICATION_CREDENTIALS_JSON": '{"k": "abcdefgh12"}', "HOME": "/root/verylongpath",
           "RAY_AUTH_MODE": "token", "SSH_AUTH_SOCK": str(tmp_path), "SOME_KEY_ENABLED": "true",
           "MAX_KEYS": "12345678", "PATH": "/usr/bin:/bin"}
    found = secret_values(env)
    assert set(found) == {TOKEN, AWS_KEY, "hunter2hunter2", '{"k": "abcdefgh12"}'}
    text = f"url?token={TOKEN}&k={AWS_KEY} {json.dumps(dict(env))}"
    clean = redact(text, found)
    assert TOKEN not in clean and AWS_KEY not in clean and "abcdefgh12" not in clean and REDACTED in clean
    assert "/usr/bin:/bin" in clean and "token" in clean  # what is not secret stays


def test_redacted_copy_rewrites_only_files_with_secrets(tmp_path):
    src = tmp_path / "trial"
    (src / "sub").mkdir(parents=True)
    (src / "clean.txt").write_text("nothing here")
    (src / "sub" / "result.json").write_text(json.dumps({"env": {"X_TOKEN": TOKEN}}))
    same, tmp = redacted_copy(src / "clean.txt", [TOKEN])
    assert same == src / "clean.txt" and tmp is None
    copy, tmp = redacted_copy(src, [TOKEN])
    try:
        assert copy != src and (copy / "clean.txt").read_text() == "nothing here"
        assert json.loads((copy / "sub" / "result.json").read_text()) == {"env": {"X_TOKEN": REDACTED}}
        assert TOKEN in (src / "sub" / "result.json").read_text()  # the original is untouched
    finally:
        tmp.cleanup()


def test_offline_env_defaults_and_the_users_choice_wins(monkeypatch):
    for name in OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    assert offline_env() == {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0",
                             "HF_HUB_DISABLE_TELEMETRY": "1"}
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # the user turns MLflow telemetry on
    assert offline_env()["MLFLOW_DISABLE_TELEMETRY"] == "false"


def test_mlflow_sees_telemetry_disabled_in_recons_process(monkeypatch):
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    from recon.core.privacy import apply_offline_env
    from mlflow.telemetry.utils import is_telemetry_disabled

    apply_offline_env()
    assert is_telemetry_disabled()


def test_ray_workers_get_the_opt_outs(monkeypatch):
    import ray

    from recon.core import ray_session

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray_session, "cluster_to_join", lambda address=None: None)
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    assert ray_session.ensure_ray(num_cpus=1)
    env_vars = seen["runtime_env"]["env_vars"]
    assert env_vars["MLFLOW_DISABLE_TELEMETRY"] and env_vars["RAY_USAGE_STATS_ENABLED"] == "0"
    assert seen["runtime_env"]["worker_process_setup_hook"].endswith("quiet_workers")


def test_recon_ui_print_only_binds_localhost_with_telemetry_off(tmp_path, capsys, monkeypatch):
    from recon.orchestration.cli.main import main
    from recon.orchestration.cli.commands.study import ui_env

    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--port", "5077", "--print-only"]) == 0
    out = capsys.readouterr().out
    command = next(line for line in out.splitlines() if line.startswith("command: "))
    assert "--host 127.0.0.1" in command and "--port 5077" in command and "0.0.0.0" not in out
    assert "http://127.0.0.1:5077/" in out
    assert "MLFLOW_DISABLE_TELEMETRY=true" in out and "RAY_USAGE_STATS_ENABLED=0" in out
    assert ui_env()["MLFLOW_DISABLE_TELEMETRY"] == "true"
    # Told otherwise, it binds elsewhere and says what that means.
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--host", "0.0.0.0", "--print-only"]) == 0
    out = capsys.readouterr().out
    assert "--host 0.0.0.0" in out and "warning: bound to 0.0.0.0" in out


def _leaky_study(tmp_path: Path) -> Path:
    code = (FIXTURES / "toy_trainer.py").read_text() + LEAKY
    (tmp_path / "toy_trainer.py").write_text(code)
    text = (FIXTURES / "toy_study.yaml").read_text().replace("seeds: [42, 43]", "seeds: [42]")
    text = text.replace("trainer: toy_trainer.py:train", "trainer: toy_trainer.py:leaky")
    path = tmp_path / "study.yaml"
    path.write_text(text + f"output_dir: {tmp_path / 'out'}\n")
    return path


def _texts_in(path: Path):
    data = path.read_bytes()
    yield data
    if path.suffix == ".gz":
        yield gzip.decompress(data)


@pytest.mark.slow
def test_secret_environment_values_never_reach_mlflow(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from recon.orchestration.cli.main import main
    from recon.orchestration.study.spec import load_spec

    monkeypatch.setenv("RECON_TEST_API_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_KEY)
    path = _leaky_study(tmp_path)
    assert main(["study", "run", str(path)]) == 0
    capsys.readouterr()
    spec = load_spec(path)
    out = spec.resolved_output_dir()
    # The trainer did leak: its outputs in storage hold the token (so the check below means something).
    assert any(TOKEN in p.read_text(errors="ignore") for p in (out / "results").rglob("result.json"))

    secrets = (TOKEN, AWS_KEY)
    client = MlflowClient(spec.resolved_tracking_uri())
    experiment = client.get_experiment_by_name(spec.name)
    texts = [json.dumps(experiment.tags)]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2  # the trial and the study's parent run
    artifacts = 0
    for run in runs:
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags), run.info.run_name]
        for item in run.inputs.dataset_inputs:
            d = item.dataset
            texts += [d.name, d.source, d.profile or "", d.schema or ""]
        stack = [None]
        while stack:  # every artifact, through MLflow's own listing and download
            for info in client.list_artifacts(run.info.run_id, stack.pop()):
                if info.is_dir:
                    stack.append(info.path)
                    continue
                local = Path(client.download_artifacts(run.info.run_id, info.path, str(tmp_path / "dl")))
                for data in _texts_in(local):
                    assert not any(s.encode() in data for s in secrets), f"secret in artifact {info.path}"
                artifacts += 1
    assert artifacts >= 5
    trial = next(r for r in runs if r.data.tags.get("recon.role") == "trial")
    assert REDACTED in trial.data.tags["notes"]  # the careless note is logged, without the token
    for text in texts:
        assert not any(s in text for s in secrets), text[:200]
    # And nowhere in the store's files (the SQLite database, the artifact folder) in any form.
    files = [Path(str(spec.resolved_tracking_uri()).removeprefix("sqlite:///"))]
    files += [p for p in (out / "artifacts").rglob("*") if p.is_file()]
    for file in files:
        for data in _texts_in(file):
            assert not any(s.encode() in data for s in secrets), f"secret in {file}"
    db = sqlite3.connect(files[0])
    try:
        for (value,) in db.execute("select value from tags union all select value from params"):
            assert not any(s in (value or "") for s in secrets)
    finally:
        db.close()
    shutil.rmtree(tmp_path / "dl", ignore_errors=True)


def test_sweep_tracker_redacts_params_tags_and_artifacts(tmp_path, monkeypatch):
    """The sweep's MLflow writer: a secret in a sampled value, a resolved config or an artifact is redacted."""
    from mlflow.tracking import MlflowClient

    from recon.orchestration.sweep.tracker import SweepTracker

    monkeypatch.setenv("RECON_TEST_API_TOKEN", TOKEN)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "sweep-secrets", tmp_path / "mlruns")
    tracker.parent_run_id({"pretrain": {"tracking_uri": f"https://user:{TOKEN}@mlflow.example"}})
    record = {"trial_id": f"t-{TOKEN}", "probes": [], "curve": [], "result": {"seconds": 1.0},
              "pretrain": {"note": f"token {TOKEN}"}, "probe": {}}
    assert tracker.log_trial(0, {"pretrain.p_blank": TOKEN}, "completed", record)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "best.json").write_text(json.dumps({"env": TOKEN}))
    run_id = tracker.finish(artifacts, None)
    assert TOKEN in (artifacts / "best.json").read_text()  # the local file is left as written

    client = MlflowClient(uri)
    runs = client.search_runs([tracker.experiment.experiment_id])
    assert len(runs) == 2
    for run in runs:
        text = json.dumps(run.data.params) + json.dumps(run.data.tags) + run.info.run_name
        assert TOKEN not in text and (REDACTED in text)
    logged = Path(client.download_artifacts(run_id, "best.json", str(tmp_path / "dl"))).read_text()
    assert TOKEN not in logged and REDACTED in logged
