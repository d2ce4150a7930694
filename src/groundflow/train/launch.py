"""Run a training job in-process (one device) or through `accelerate launch` (several GPUs,
DeepSpeed ZeRO), with the same records, config and output layout either way."""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from groundflow.models.spec import ModelSpec
from groundflow.train.config import SFTConfig

log = logging.getLogger(__name__)


def run_sft(*, model: dict, records_path: str, image_root: str | None, out_dir: str, train: dict) -> Path:
    settings = dict(train)
    accelerate_config = settings.pop("accelerate_config", "") or ""
    config = SFTConfig.from_dict(settings)
    if not accelerate_config:
        # The trainer is imported here: the `accelerate launch` path runs it in child processes.
        from groundflow.train.data import read_records
        from groundflow.train.sft import train_sft

        records = read_records(records_path)
        return train_sft(model_spec=ModelSpec.from_config(model), records=records,
                         image_root=image_root, out_dir=out_dir, config=config)
    spec = ModelSpec.from_config(model)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, dir=Path(out_dir).parent) as f:
        yaml.safe_dump(settings, f)
        config_file = f.name
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
           "-m", "groundflow.train.sft", "--records", records_path, "--model", spec.path,
           "--dtype", spec.dtype, "--device", spec.device, "--out", out_dir, "--config", config_file]
    if image_root:
        cmd += ["--image-root", image_root]
    log.info("launching: %s", shlex.join(cmd))
    try:
        subprocess.run(cmd, check=True)
    finally:
        Path(config_file).unlink(missing_ok=True)
    return Path(out_dir) / "model"
