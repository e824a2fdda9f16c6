"""A study's pre-trained CP encoder as an MLflow model: in the store, loadable without recon, and in MLflow's UI.

A small study (a tiny BERT, a 2-step CP stage on the fixture corpus, one trial from the plain encoder and
one from the CP stage) runs locally. Then:

* the experiment holds one LoggedModel, ``cp-encoder``: produced by the stage's pre-training run (its
  source run and the run's output), with that run's last-step metrics (loss, CP loss, contrastive accuracy...) and the stage's tags;
* the trial that starts from the stage has the model as an input of its run; the other trial has none;
* the model loads with ``mlflow.pyfunc`` in a process where ``import recon`` fails, and maps a marked
  sentence to a relation vector (2 x hidden floats);
* MLflow 3.17's UI, opened from ``recon ui`` in headless Chromium (as the dashboard test does), lists the
  model in the experiment's Models tab with its source run and metrics, and shows it as the trial run's
  input. Screenshots: ``/tmp/models-tab.png`` and ``/tmp/recon-shots/models-*.png``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from headless_browser import chromium_driver
from test_dashboard import SHOTS, _close_assistant, _free_port, _open, _stop_ui, _wait_http, _wait_text
from tiny_bert import make_tiny_bert_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RECON_DATA_DIR") or ROOT.parent / "shared" / "datasets")
CORPUS = ROOT / "tests" / "fixtures" / "pretrain" / "corpus"
MODELS_TAB_SHOT = Path("/tmp/models-tab.png")
#: Seconds a page may take to show: MLflow's UI loads a few MB of scripts from the one-worker server, which
#: took over a minute per page on this 2-core machine under other tests' load.
PAGE_TIMEOUT = 420

LOAD_WITHOUT_RECON = textwrap.dedent('''
    import importlib.abc, json, sys

    class NoRecon(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "recon" or name.startswith("recon."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: the model must not need recon)")
            return None

    sys.meta_path.insert(0, NoRecon())
    import mlflow

    mlflow.set_tracking_uri(sys.argv[1])
    model = mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}")
    vectors = model.predict(json.loads(sys.argv[3]))
    print(json.dumps({"vectors": vectors, "recon": [m for m in sys.modules if m.split(".")[0] == "recon"]}))
''')


def _study(folder: Path) -> Path:
    encoder = make_tiny_bert_dir(folder, mlm=True)
    text = f"""
name: modelstab
encoder: {encoder}
models: [{{name: Tiny}}, {{name: Tiny+CP, checkpoint: '@pretrain.cp'}}]
pretrain:
  cp: {{objective: cp, corpus: {CORPUS}, steps: 2, batch_size: 8, micro_batch_size: 4, num_workers: 1,
       warmup: 0, lr: 1.0e-3, checkpoint_every: 2, max_length: 32, allow_leakage: true}}
grids:
  - {{table: table5, datasets: [semeval], splits: [0.01], formats: [C+M]}}
seeds: [42]
training: {{epochs: 1, batch_size: 16, lr: 1.0e-3, max_train_steps: 2}}
data: {{split_source: paper, max_eval: 30, max_length: 32, data_dir: {DATA}}}
ray: {{cpus_per_trial: 1, max_concurrent_trials: 1}}
output_dir: {folder / 'out'}
"""
    path = folder / "study.yaml"
    path.write_text(text)
    return path


def _shot(driver, name: str) -> Path:
    time.sleep(1.5)  # let the last requests paint
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"models-{name}.png"
    driver.save_screenshot(str(path))
    return path


@pytest.mark.slow
def test_the_cp_encoder_is_an_mlflow_model_linked_to_its_runs_and_listed_in_the_models_tab(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from recon.orchestration.cli.main import main
    from recon.orchestration.study.spec import load_spec

    # wide: the Models tab has a column per metric of the model, right of its attributes
    driver = chromium_driver("3000,900")  # skips (fails under CI) before the study runs when there is no browser
    path = _study(tmp_path)
    assert main(["study", "run", str(path)]) == 0, capsys.readouterr().out[-4000:]
    capsys.readouterr()
    spec = load_spec(path)
    client = MlflowClient(spec.resolved_tracking_uri())
    experiment = client.get_experiment_by_name(spec.name)

    # The store: one model, made by the stage's pre-training run, with that run's last-step metrics.
    models = client.search_logged_models([experiment.experiment_id])
    assert [m.name for m in models] == ["cp-encoder"]
    model = models[0]
    source = client.get_run(model.source_run_id)
    assert source.info.run_name == "cp" and source.data.tags["recon.kind"] == "pretrain"
    assert source.data.tags["recon.model_id"] == model.model_id
    assert [o.model_id for o in source.outputs.model_outputs] == [model.model_id]
    assert model.tags["recon.stage"] == "cp" and model.tags["recon.stage_hash"] == spec.stage_hash("cp")
    assert model.tags["mlflow.source.name"] == "recon study modelstab" and model.model_type == "relation-encoder"
    metrics = {m.key: m for m in model.metrics}
    assert {"loss", "cp_loss", "mlm_loss", "contrastive_accuracy"} <= set(metrics)
    assert all(m.step == 2 for m in metrics.values())
    assert metrics["loss"].value == client.get_metric_history(source.info.run_id, "loss")[-1].value

    # The fine-tuning run that starts from the stage takes the model as its input; the other does not.
    trials = {r.data.tags["model"]: client.get_run(r.info.run_id)  # get_run: a search leaves model inputs out
              for r in client.search_runs([experiment.experiment_id], "tags.`recon.role` = 'trial'")}
    assert set(trials) == {"Tiny", "Tiny+CP"}
    assert [i.model_id for i in trials["Tiny+CP"].inputs.model_inputs] == [model.model_id]
    assert trials["Tiny+CP"].data.tags["recon.encoder_model"] == model.model_id
    assert not trials["Tiny"].inputs.model_inputs and "recon.encoder_model" not in trials["Tiny"].data.tags

    # It loads and runs without recon.
    from recon.models.nets.loading import load_encoder

    special = load_encoder(str(tmp_path / "tiny-bert-mlm")).special  # the markers recon gives this vocabulary
    text = f"{special.head_start} bill gates {special.head_end} founded {special.tail_start} microsoft " \
           f"{special.tail_end} ."
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_RECON, spec.resolved_tracking_uri(), model.model_id,
                           json.dumps([text])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["recon"] == [] and len(loaded["vectors"]) == 1 and len(loaded["vectors"][0]) == 2 * 32

    # The UI: the Models tab lists it with its source run and metrics; the trial run shows it as its input.
    port = _free_port()
    log = open(tmp_path / "ui.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "recon.orchestration.cli.main", "ui", str(path), "--port",
                             str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/", proc)
        ml = "?workflowType=machine_learning"
        _open(driver, f"{base}/#/experiments/{experiment.experiment_id}/models{ml}")
        text = _wait_text(driver, "cp-encoder", "Ready", "Source run", timeout=PAGE_TIMEOUT)
        assert "recon study modelstab" in text and "\ncp\n" in text  # logged from, and the source run's name
        _close_assistant(driver)  # its panel takes the width of a few metric columns
        text = _wait_text(driver, "contrastive_accuracy", "cp_loss", str(metrics["loss"].value),
                          str(metrics["cp_loss"].value), str(metrics["contrastive_accuracy"].value), timeout=60)
        assert "\nloss\n" in text  # the model's metrics, one column each
        shot = _shot(driver, "tab")
        shutil.copy(shot, MODELS_TAB_SHOT)

        _open(driver, f"{base}/#/experiments/{experiment.experiment_id}/models/{model.model_id}{ml}")
        text = _wait_text(driver, "cp-encoder", "contrastive_accuracy", "Source run", timeout=PAGE_TIMEOUT)
        _close_assistant(driver)
        _shot(driver, "model")

        trial = trials["Tiny+CP"]
        _open(driver, f"{base}/#/experiments/{experiment.experiment_id}/runs/{trial.info.run_id}{ml}")
        text = _wait_text(driver, "Logged models (1)", "cp-encoder", "Input", timeout=PAGE_TIMEOUT)
        from selenium.webdriver.common.by import By

        links = [a for a in driver.find_elements(By.CSS_SELECTOR, f"a[href*='{model.model_id}']")
                 if a.text == "cp-encoder"]
        assert links, "the trial run's page has no link to the model"
        _close_assistant(driver)
        section = driver.find_element(By.XPATH, "//*[starts-with(normalize-space(text()), 'Logged models')]")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", section)
        _shot(driver, "trial")
    finally:
        driver.quit()
        _stop_ui(proc, log)
