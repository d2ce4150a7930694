"""A non-editable `pip install .` runs the workflow: the package carries its schemas (config and
artifact tables) as package data instead of reading them from the source tree."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snakemake_runner import ROOT, make_run_dir

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """groundflow built from a copy of the source (no build files in the checkout) and installed
    into a folder of its own, which PYTHONPATH puts ahead of the venv's editable install."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", source)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(source)], check=True)
    return target


def run_with(installed: Path, cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def test_the_installed_copy_is_the_one_imported(installed, tmp_path):
    done = run_with(installed, [sys.executable, "-c", "import groundflow; print(groundflow.__file__)"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(installed)
    packaged = {p.name for p in (installed / "groundflow" / "schemas").glob("*.schema.yaml")}
    assert {"config.schema.yaml", "cvc_instances.schema.yaml", "rejects.schema.yaml"} <= packaged


def test_installed_package_runs_the_workflow(installed, tmp_path):
    run = make_run_dir(tmp_path / "run")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", "2",
           "results/cvc/ingest/counts.json"]
    done = run_with(installed, cmd, run)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert (run / "results/cvc/ingest/0.parquet").exists()
    plan = run_with(installed, cmd[:-1] + ["-n", "all"], run)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "cvc_train" in plan.stdout + plan.stderr


def test_installed_cli_makes_a_run_folder_from_the_named_checkout(installed, tmp_path):
    groundflow = [sys.executable, "-m", "groundflow.cli", "init"]
    refused = run_with(installed, groundflow + [str(tmp_path / "a")], tmp_path)
    assert refused.returncode == 2 and "pass --workflow" in refused.stderr
    assert not (tmp_path / "a").exists()
    done = run_with(installed, groundflow + [str(tmp_path / "b"), "--preset", "cvc-paper", "--workflow", str(ROOT)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b/config.yaml").read_text() == (ROOT / "configs/cvc-paper.yaml").read_text()
