"""Run a training job in-process (one device) or through `accelerate launch` (several GPUs,
DeepSpeed ZeRO), with the same records, config and output layout either way.

Where the launch files are found: `accelerate_config`, and the DeepSpeed file that an accelerate
file names under `deepspeed_config.deepspeed_config_file`, are taken as they are when absolute; a
relative path is looked up first in the run folder (the working folder of the job, which
`snakemake --directory RUN` makes RUN), so that a user's own file there wins, then in the workflow
(the folder holding the Snakefile: the checkout, with our configs/accelerate and configs/deepspeed).
accelerate itself would resolve the DeepSpeed file from the working folder alone, so the launcher
hands it a copy of the accelerate file with that path made absolute.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from groundflow.io.artifacts import atomic_path
from groundflow.models.spec import ModelSpec
from groundflow.train.config import SFTConfig

log = logging.getLogger(__name__)

# Launch settings that ride in a train section beside SFTConfig's: the accelerate file, and the
# workflow folder that relative launch files are looked up in after the run folder (set by the rules).
ACCELERATE_CONFIG = "accelerate_config"
WORKFLOW_DIR = "workflow_dir"


def resolve_launch_file(path: str | os.PathLike, *, run_dir: str | os.PathLike,
                        workflow_dir: str | os.PathLike | None) -> Path:
    """The launch file `path` names: absolute as it is; relative, the run folder's if it has one,
    else the workflow's. Raises FileNotFoundError naming every place looked in."""
    path = Path(path).expanduser()
    candidates = [path] if path.is_absolute() else [Path(run_dir) / path] + (
        [Path(workflow_dir) / path] if workflow_dir else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"launch file {str(path)!r} not found; looked in: {', '.join(str(c) for c in candidates)}")


def resolved_accelerate_settings(accelerate_config: str | os.PathLike, *, run_dir: str | os.PathLike,
                                 workflow_dir: str | os.PathLike | None) -> tuple[Path, dict]:
    """(the accelerate file, its settings with the DeepSpeed file it names made absolute)."""
    config_path = resolve_launch_file(accelerate_config, run_dir=run_dir, workflow_dir=workflow_dir)
    settings = yaml.safe_load(config_path.read_text()) or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{config_path}: expected a mapping of accelerate settings")
    deepspeed = settings.get("deepspeed_config")
    if isinstance(deepspeed, dict) and deepspeed.get("deepspeed_config_file"):
        try:
            found = resolve_launch_file(deepspeed["deepspeed_config_file"], run_dir=run_dir, workflow_dir=workflow_dir)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{config_path}: {error}") from None
        settings = {**settings, "deepspeed_config": {**deepspeed, "deepspeed_config_file": str(found)}}
    return config_path, settings


def check_launch_settings(train: dict, *, run_dir: str | os.PathLike, workflow_dir: str | os.PathLike) -> dict:
    """A train section as the rules pass it on, after checking that its launch files are found (so
    a dry run already fails on a missing one). The workflow folder is not added: the job's script
    adds it (`pipeline.train_settings`), so the checkout's path is no param of the job."""
    if train.get(ACCELERATE_CONFIG):
        resolved_accelerate_settings(train[ACCELERATE_CONFIG], run_dir=run_dir, workflow_dir=workflow_dir)
    return dict(train)


def accelerate_command(*, config_file: str, spec: ModelSpec, records_path: str, out_dir: str,
                       settings_file: str, image_root: str | None, module: str = "groundflow.train.sft",
                       extra_args: tuple[str, ...] = ()) -> list[str]:
    """The launch of a trainer module that takes train.sft's command line (plus `extra_args`)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file,
           "-m", module, "--records", records_path, "--model", spec.path,
           "--dtype", spec.dtype, "--device", spec.device, "--out", out_dir, "--config", settings_file]
    if image_root:
        cmd += ["--image-root", image_root]
    return cmd + list(extra_args)


def run_sft(*, model: dict, records_path: str, image_root: str | None, out_dir: str, train: dict) -> Path:
    """Train on `records_path` with the settings of `train` (SFTConfig's, plus the launch settings
    `accelerate_config` and `workflow_dir`); returns out_dir/model."""
    settings = dict(train)
    accelerate_config = settings.pop(ACCELERATE_CONFIG, "") or ""
    workflow_dir = settings.pop(WORKFLOW_DIR, None)
    config = SFTConfig.from_dict(settings)
    if not accelerate_config:
        # The trainer is imported here: the `accelerate launch` path runs it in child processes.
        from groundflow.train.data import read_records
        from groundflow.train.sft import train_sft

        records = read_records(records_path)
        return train_sft(model_spec=ModelSpec.from_config(model), records=records,
                         image_root=image_root, out_dir=out_dir, config=config)
    return launch_accelerate("groundflow.train.sft", accelerate_config=accelerate_config, workflow_dir=workflow_dir,
                             model=model, records_path=records_path, image_root=image_root, out_dir=out_dir,
                             settings=settings)


def launch_accelerate(module: str, *, accelerate_config: str, workflow_dir: str | None, model: dict,
                      records_path: str, image_root: str | None, out_dir: str, settings: dict,
                      extra_args: tuple[str, ...] = ()) -> Path:
    """Run trainer `module` under `accelerate launch` with the SFTConfig `settings`; returns out_dir/model."""
    spec = ModelSpec.from_config(model)
    source, accelerate_settings = resolved_accelerate_settings(accelerate_config, run_dir=Path.cwd(),
                                                               workflow_dir=workflow_dir)
    scratch = Path(out_dir).parent
    scratch.mkdir(parents=True, exist_ok=True)
    name = Path(out_dir).name
    # Both files are read by the launched processes; they go once the launch returns.
    launch_file, settings_file = scratch / f".{name}.accelerate.yaml", scratch / f".{name}.train.yaml"
    with atomic_path(launch_file) as tmp:
        Path(tmp).write_text(f"# {source}, launch paths made absolute\n" + yaml.safe_dump(accelerate_settings))
    with atomic_path(settings_file) as tmp:
        Path(tmp).write_text(yaml.safe_dump(settings))
    cmd = accelerate_command(config_file=str(launch_file), spec=spec, records_path=records_path, out_dir=out_dir,
                             settings_file=str(settings_file), image_root=image_root, module=module,
                             extra_args=tuple(extra_args))
    log.info("launching (accelerate settings of %s): %s", source, shlex.join(cmd))
    try:
        subprocess.run(cmd, check=True)
    finally:
        launch_file.unlink(missing_ok=True)
        settings_file.unlink(missing_ok=True)
    return Path(out_dir) / "model"
