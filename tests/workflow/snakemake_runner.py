import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI on this repo's Snakefile in `workdir` (a run folder holding its
    own config.yaml, as a user's run folder does)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}")
    return out


def make_run_dir(path: Path, overrides: dict | None = None) -> Path:
    """A run folder with the embedded default config, deep-updated with `overrides`."""
    path.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    _deep_update(config, overrides or {})
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _deep_update(base: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def say(pytestconfig, line: str) -> None:
    """Print past pytest's output capture, so that `make test` (CI) shows a measurement."""
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\n{line}", end="", flush=True)
