"""Where `accelerate launch` finds its files: absolute paths as they are, relative ones in the run
folder first, then in the workflow (the checkout holding the Snakefile), the DeepSpeed file that an
accelerate file names included (train.launch)."""
import json
import os
from types import SimpleNamespace
from pathlib import Path

import pytest
import yaml

from groundflow.train import launch
from groundflow.pipeline import train_settings
from groundflow.train.launch import (
    check_launch_settings,
    resolve_launch_file,
    resolved_accelerate_settings,
    run_sft,
)

REPO = Path(__file__).resolve().parents[2]
ZERO3 = "configs/accelerate/zero3.yaml"


def test_absolute_path_is_taken_as_it_is(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("num_processes: 2\n")
    assert resolve_launch_file(own, run_dir=tmp_path / "elsewhere", workflow_dir=REPO) == own.resolve()


def test_relative_path_from_the_workflow_when_the_run_folder_has_none(tmp_path):
    assert resolve_launch_file(ZERO3, run_dir=tmp_path, workflow_dir=REPO) == (REPO / ZERO3).resolve()


def test_a_file_of_the_run_folder_wins_over_the_workflows(tmp_path):
    own = tmp_path / ZERO3
    own.parent.mkdir(parents=True)
    own.write_text("num_processes: 4\n")
    assert resolve_launch_file(ZERO3, run_dir=tmp_path, workflow_dir=REPO) == own.resolve()


def test_a_missing_file_names_every_place_looked_in(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        resolve_launch_file("configs/accelerate/nothere.yaml", run_dir=tmp_path, workflow_dir=REPO)
    assert str(tmp_path / "configs/accelerate/nothere.yaml") in str(error.value)
    assert str(REPO / "configs/accelerate/nothere.yaml") in str(error.value)


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_the_deepspeed_file_an_accelerate_file_names_is_made_absolute(tmp_path, name):
    path, settings = resolved_accelerate_settings(f"configs/accelerate/{name}.yaml", run_dir=tmp_path, workflow_dir=REPO)
    assert path == REPO / "configs" / "accelerate" / f"{name}.yaml"
    deepspeed_file = Path(settings["deepspeed_config"]["deepspeed_config_file"])
    assert deepspeed_file == REPO / "configs" / "deepspeed" / f"{name}.json"
    assert json.loads(deepspeed_file.read_text())["zero_optimization"]["stage"] == int(name[-1])
    original = yaml.safe_load(path.read_text())
    assert {k: v for k, v in settings.items() if k != "deepspeed_config"} == {
        k: v for k, v in original.items() if k != "deepspeed_config"}


def test_an_accelerate_file_naming_a_missing_deepspeed_file_is_refused(tmp_path):
    own = tmp_path / "ds.yaml"
    own.write_text(yaml.safe_dump({"distributed_type": "DEEPSPEED",
                                   "deepspeed_config": {"deepspeed_config_file": "configs/deepspeed/gone.json"}}))
    with pytest.raises(FileNotFoundError, match=r"ds\.yaml: launch file 'configs/deepspeed/gone.json' not found"):
        resolved_accelerate_settings(own, run_dir=tmp_path, workflow_dir=REPO)


def test_rules_settings_carry_the_workflow_and_fail_the_plan_on_a_missing_file(tmp_path):
    settings = check_launch_settings({"learning_rate": 2e-5, "accelerate_config": ZERO3}, run_dir=tmp_path,
                                     workflow_dir=REPO)
    # the checkout's path is no param of the job (moving the checkout must not re-run training)
    assert settings == {"learning_rate": 2e-5, "accelerate_config": ZERO3}
    assert check_launch_settings({}, run_dir=tmp_path, workflow_dir=REPO) == {}
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        check_launch_settings({"accelerate_config": "nothere.yaml"}, run_dir=tmp_path, workflow_dir=REPO)


def test_the_launched_command_finds_both_files_from_a_run_folder_elsewhere(tmp_path, monkeypatch):
    """A job of `snakemake --directory RUN`: the working folder is RUN, which holds no configs/."""
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    seen = {}

    def fake_run(cmd, check):
        # what the launched processes would read, read before the launcher removes it
        config_file = Path(cmd[cmd.index("--config_file") + 1])
        seen["cmd"] = cmd
        seen["accelerate"] = yaml.safe_load(config_file.read_text())
        seen["train"] = yaml.safe_load(Path(cmd[cmd.index("--config") + 1]).read_text())
        seen["config_file"] = config_file

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    checked = check_launch_settings({"max_steps": 3, "accelerate_config": ZERO3}, run_dir=os.getcwd(), workflow_dir=REPO)
    # what the job's script hands run_sft: the checkout taken from the script's own location
    script = SimpleNamespace(params=SimpleNamespace(train=checked), scriptdir=str(REPO / "workflow" / "scripts"))
    train = train_settings(script)
    assert train == {**checked, "workflow_dir": str(REPO)}
    out = run_sft(model={"path": "some/model"}, records_path="results/cvc/hybrid/train.json", image_root=".",
                  out_dir="results/cvc/train", train=train)
    assert out == Path("results/cvc/train/model")
    deepspeed_file = Path(seen["accelerate"]["deepspeed_config"]["deepspeed_config_file"])
    assert deepspeed_file.is_absolute() and deepspeed_file.is_file()
    assert seen["accelerate"]["distributed_type"] == "DEEPSPEED" and seen["accelerate"]["num_processes"] == 8
    assert seen["train"] == {"max_steps": 3}  # launch settings stay out of the trainer's settings
    assert not seen["config_file"].exists()  # removed once the launch returned
    assert not list((run / "results" / "cvc").glob(".train.*"))


def test_without_the_workflow_a_relative_file_is_looked_up_in_the_run_folder_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launch.subprocess, "run", lambda cmd, check: pytest.fail("must not launch"))
    with pytest.raises(FileNotFoundError, match="looked in: " + str(tmp_path / ZERO3) + "$"):
        run_sft(model={"path": "m"}, records_path="r.json", image_root=None, out_dir="out/train",
                train={"accelerate_config": ZERO3})
