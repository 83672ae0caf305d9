"""The planner-trainer wheel: built from pyproject.toml, installed into a separate environment,
and its `planner-train` console script run from outside the repository (as the image and the
Databricks wheel task do)."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from include.core import names

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed_trainer(tmp_path_factory) -> Path:
    """A venv holding only the wheel; its dependencies come from the project venv via a .pth
    (installing torch again would take minutes and prove nothing about our package)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "dist"), str(PROJECT_ROOT)], check=True, cwd=work)
    (wheel,) = (work / "dist").glob("planner_trainer-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read(next(n for n in archive.namelist() if n.endswith("entry_points.txt"))).decode()
        packaged = {n.split("/")[1] for n in archive.namelist() if n.startswith("include/") and n.count("/") == 2}
    assert "planner-train = include.training.cli:main" in entry_points
    assert packaged == {"core", "training"}, "the wheel carries the trainer and the core only"

    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_clean_env())
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                   check=True, env=_clean_env(), cwd=work)
    return venv / "bin" / "planner-train"


def _clean_env() -> dict:
    """Without PYTHONPATH: the package must come from the wheel, not from the checkout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(script: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=600)


def test_console_script_from_the_installed_wheel(installed_trainer, published_dataset, tmp_path):
    help_run = _run(installed_trainer, tmp_path, "--help")
    assert help_run.returncode == 0 and "--training-run-id" in help_run.stdout

    missing = _run(installed_trainer, tmp_path, "--dataset-uri", str(tmp_path / "nope"), "--output-root",
                   str(tmp_path / "models"), "--training-run-id", "planner_acceptance-v20261123_000000")
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    trained = _run(installed_trainer, tmp_path, "--dataset-uri", published_dataset, "--output-root",
                   str(tmp_path / "models"), "--training-run-id", "planner_acceptance-v20261123_000000",
                   "--epochs", "1", "--max-rows", "200", "--batch-size", "32")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "models" / "planner_acceptance-v20261123_000000" / names.SUCCESS_MARKER).exists()
    origin = subprocess.run([str(installed_trainer.parent / "python"), "-c",
                             "import include.training.cli as m; print(m.__file__)"], cwd=tmp_path,
                            capture_output=True, text=True, env=_clean_env())
    assert str(installed_trainer.parents[1]) in origin.stdout, origin.stdout + origin.stderr
