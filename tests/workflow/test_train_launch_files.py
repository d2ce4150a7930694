"""A run folder made with `groundflow init` and planned with `--directory` from elsewhere finds the
checkout's accelerate/DeepSpeed files (rules/common.smk: train_params -> train.launch)."""
import os
import subprocess
import sys

import pytest
import yaml

from snakemake_runner import ROOT

pytestmark = pytest.mark.workflow


def _plan(cwd, run, *args):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(run),
           "-n", "--quiet", "rules", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("preset", ["cvc-paper", "cings-paper"])
def test_a_run_folder_planned_from_elsewhere_finds_the_workflows_launch_files(tmp_path, preset):
    from groundflow.cli import main

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert main(["init", str(run), "--preset", preset]) == 0
    assert not (run / "configs").exists()  # the files are the checkout's, not copies in the run
    out = _plan(elsewhere, run)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "cvc_train" in out.stdout if preset == "cvc-paper" else "cings_vl_stage2" in out.stdout


def test_a_launch_file_found_nowhere_stops_the_plan_naming_where_it_looked(tmp_path):
    from groundflow.cli import main

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert main(["init", str(run), "--preset", "cvc-paper"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["cvc"]["train"]["accelerate_config"] = "configs/accelerate/zero4.yaml"
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = _plan(elsewhere, run)
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert str(run / "configs/accelerate/zero4.yaml") in said and str(ROOT / "configs/accelerate/zero4.yaml") in said
