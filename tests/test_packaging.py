"""recon installs as one ``recon`` namespace: its folders never shadow another package's ``models``."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("core", "data_prep", "models", "orchestration")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_folder_is_installed_under_recon():
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {
        "recon." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")
    }
    assert on_disk == listed, f"pyproject packages out of date: missing {on_disk - listed}, extra {listed - on_disk}"
    assert setuptools["package-dir"] == {f"recon.{f}": f for f in FOLDERS}


@pytest.mark.slow
def test_recon_imports_beside_an_unrelated_models_package(tmp_path):
    """A fresh virtual environment holding a package named ``models``: both import, neither shadows."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "models").mkdir(parents=True)
    (Path(site) / "models" / "__init__.py").write_text("UNRELATED = True\n")
    # A real (non-editable) wheel install, so the wheel's layout is what is tested; built from a copy
    # of the tracked files so the checkout gets no build/ folder.
    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    for name in tracked:
        if name.startswith(("tests/", "bench/", "studies/")) or not (ROOT / name).is_file():
            continue
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    # The venv's own pip (seen through system site-packages) installs into the venv and leaves the
    # outer environment's recon alone.
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--ignore-installed",
                    "--quiet", str(source)], check=True, env={**os.environ, "PIP_NO_INPUT": "1"},
                   cwd=tmp_path)
    probe = (
        "import models, recon.models.nets.encoder, recon.data_prep.registry, recon.orchestration.cli.main, pathlib;"
        "assert models.UNRELATED;"
        "print(pathlib.Path(recon.models.nets.encoder.__file__).is_relative_to(pathlib.Path(models.__file__).parents[1]))"
    )
    out = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"  # recon came from the venv's wheel, not the checkout
    resources = subprocess.run([python, "-c", "import importlib.resources as r;"
                                "print(r.files('recon.orchestration.report').joinpath('resources/reported_results.csv').is_file())"],
                               cwd=tmp_path, capture_output=True, text=True)
    assert resources.stdout.strip() == "True", resources.stderr


def test_ci_runs_the_readme_test_command_and_it_installs_what_the_tests_need():
    """`.ci/run` is the README's test command, exactly; it installs the system packages the browser and Slurm
    tests find (they never install anything themselves)."""
    readme = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("apt-get update")]
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.startswith("apt-get update")]
    assert len(readme) == 1 and ci == readme
    for package in ("chromium", "chromium-driver", "slurmctld", "slurmd", "slurm-client", "munge"):
        assert f" {package} " in readme[0]
    assert readme[0].endswith("python -m pytest")
