"""The dashboard as a researcher sees it: the toy study, ``recon ui``, MLflow 3.17's UI in headless Chromium.

After the toy study (two trials on Ray Tune), ``recon ui`` is started on a free port and the URL it
prints is opened in Debian's chromium through Selenium (no browser download): the experiment opens on
its runs table (not the GenAI overview), a trial run shows its params, tags, metrics, description and
datasets, and the parent run's paper table renders in the artifact viewer, as does its overview page.
Every request the page makes goes to 127.0.0.1. Screenshots are written under the test's tmp dir and
copied to ``/tmp/recon-shots/dashboard-*.png``.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from headless_browser import chromium_driver

FIXTURES = Path(__file__).parent / "fixtures" / "studies"
SHOTS = Path("/tmp/recon-shots")


def _study(tmp_path: Path) -> Path:
    shutil.copy(FIXTURES / "toy_trainer.py", tmp_path / "toy_trainer.py")
    text = (FIXTURES / "toy_study.yaml").read_text()
    text = text.replace("formats: [C+M]", "formats: [C+M, OnlyC]").replace("seeds: [42, 43]", "seeds: [42]")
    text = text.replace("name: toy\n", "name: toy\ndescription: SemEval 10% with a bag-of-words toy, two input formats\n")
    path = tmp_path / "study.yaml"
    path.write_text(text + f"output_dir: {tmp_path / 'out'}\n")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _driver():
    return chromium_driver("1600,1000", performance_log=True)


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _stop_ui(proc: subprocess.Popen, log) -> None:
    """Stop ``recon ui`` with its process group (its mlflow server and the server's worker), then its log."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log.close()


def _wait_text(driver, *texts: str, timeout: float = 60) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: all(t in _body(d) for t in texts))
    return _body(driver)


def _open(driver, url: str) -> None:
    driver.get("about:blank")  # a fresh load: the app does not re-route on a hash change alone
    driver.get(url)


def _shot(driver, tmp_path: Path, name: str) -> Path:
    time.sleep(1.5)  # let the last requests paint
    path = tmp_path / f"dashboard-{name}.png"
    driver.save_screenshot(str(path))
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path


def _close_assistant(driver) -> None:
    """MLflow 3.17 opens its (local) assistant panel beside the page; close it for the screenshots."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close'], button[aria-label='close']"):
        try:
            if button.is_displayed():
                button.click()
                return
        except Exception:  # noqa: BLE001 - cosmetic only
            continue


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 150) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"recon ui exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"no MLflow UI at {url} after {timeout} s")


@pytest.mark.slow
def test_dashboard_in_headless_chromium(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from recon.orchestration.cli.main import main
    from recon.orchestration.study.spec import load_spec

    driver = _driver()  # skips before the study runs when there is no browser
    path = _study(tmp_path)
    assert main(["study", "run", str(path)]) == 0
    capsys.readouterr()
    spec = load_spec(path)
    client = MlflowClient(spec.resolved_tracking_uri())
    experiment = client.get_experiment_by_name("toy")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags["recon.role"] == "study")
    trial = next(r for r in runs if r.data.tags["recon.role"] == "trial" and r.data.tags["format"] == "C+M")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "SemEval 10% with a bag-of-words toy" in experiment.tags["mlflow.note.content"]

    port = _free_port()
    log = open(tmp_path / "ui.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from recon.orchestration.cli.main import main; "
                             "sys.exit(main())", "ui", str(path), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/", proc)
        log.seek(0)
        printed = log.read()
        url = re.search(r"MLflow UI: (\S+)", printed).group(1)
        assert url == f"{base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
        assert "MLFLOW_DISABLE_TELEMETRY=true" in printed and "--host 127.0.0.1" in printed
        ml = "?workflowType=machine_learning"

        # 1. The experiment opens on its runs: the table with Dataset and Source filled, no GenAI overview.
        _open(driver, url)
        text = _wait_text(driver, "toy (study)", "Dataset", "semeval/", "recon study toy", timeout=90)
        assert "/runs" in driver.current_url and "workflowType=machine_learning" in driver.current_url
        assert "Overview" not in text and "Observability" not in text and "0 traces" not in text
        _close_assistant(driver)
        _shot(driver, tmp_path, "runs")

        # 2. A trial run: description, params, metrics, tags and its datasets.
        _open(driver, f"{base}/#/experiments/{experiment.experiment_id}/runs/{trial.info.run_id}{ml}")
        text = _wait_text(driver, "Parameters", "input_format", "test_metric", "trial_id", "semeval/", timeout=60)
        assert "C+M" in text and trial.data.tags["trial_id"] in text and "Toy on SemEval 10%" in text
        assert "recon study toy" in text and "toy (study)" in text  # Source and the parent run
        _close_assistant(driver)
        _shot(driver, tmp_path, "trial")

        # 3. The parent run: its description shows the paper table, the table artifact renders as a table.
        _open(driver, f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}{ml}")
        text = _wait_text(driver, "Study toy", "table5", timeout=60)
        _close_assistant(driver)
        _shot(driver, tmp_path, "parent")
        _open(driver, f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
                      f"/artifacts/tables/table5.json{ml}")
        text = _wait_text(driver, "tables/table5.json", "10% C+M", "10% OnlyC", "SemEval", timeout=60)
        _close_assistant(driver)
        _shot(driver, tmp_path, "table")

        # 4. The overview page (every table and plot) renders in the artifact viewer's frame.
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        _open(driver, f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
                      f"/artifacts/overview.html{ml}")
        frame = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))[0]
        _close_assistant(driver)
        _shot(driver, tmp_path, "overview")
        driver.switch_to.frame(frame)
        WebDriverWait(driver, 30).until(lambda d: "Study toy" in _body(d) and "table5" in _body(d))
        assert driver.find_elements(By.TAG_NAME, "img")  # the plot, inline
        driver.switch_to.default_content()

        # Nothing the dashboard loads comes from anywhere but this machine.
        hosts = set()
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                request_url = message["params"]["request"]["url"]
                if request_url.startswith(("http:", "https:", "ws:", "wss:")):
                    hosts.add(request_url.split("/")[2])
        assert hosts == {f"127.0.0.1:{port}"}, hosts
    finally:
        driver.quit()
        _stop_ui(proc, log)
