"""Run a workflow/scripts/*.py stage script in this process, as Snakemake's `script:` runs it.

Snakemake puts a `snakemake` object into the script's globals; `FakeSnakemake` offers what the
scripts read of it (`input`, `output`, `params` by attribute and `.get`, `log` as a list).
"""

from __future__ import annotations

import logging
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "workflow" / "scripts"


class Namespace(dict):
    __getattr__ = dict.__getitem__


class FakeSnakemake:
    def __init__(self, *, input, output, params, log, wildcards=None):
        self.input, self.output, self.params = Namespace(input), Namespace(output), Namespace(params)
        self.log = list(log)
        self.wildcards = Namespace(wildcards or {})


def run_script(name: str, smk: FakeSnakemake) -> None:
    """Run the script; the job's logging setup (log file handlers, excepthook) is undone after."""
    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    try:
        runpy.run_path(str(SCRIPTS / name), init_globals={"snakemake": smk}, run_name="__main__")
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.excepthook = hook


def stage_outputs(folder: Path, stage: str) -> dict:
    return {"kept": str(folder / f"{stage}.parquet"), "rejects": str(folder / f"{stage}.rejects.parquet"),
            "counts": str(folder / f"{stage}.counts.json")}
