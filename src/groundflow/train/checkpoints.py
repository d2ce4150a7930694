"""Which of a training run's checkpoints a restarted job may resume from.

transformers writes a checkpoint folder file by file, `trainer_state.json` last, and picks the
newest `checkpoint-N` folder whatever it holds; a job killed while saving would leave a folder
that every later resume trips over. Here only a checkpoint whose trainer state is complete counts.

A job re-run with other settings (Snakemake re-runs it when its params or inputs change) finds the
old run's checkpoints in the same folder: they were made from other data or settings, and resuming
from them would continue, or take as finished, the other run. `RUN_FILE` records what the
checkpoints were trained on (`run_fingerprint`); `discard_other_runs` removes checkpoints that do
not match. Only the step budget (max_steps, epochs) may change between runs: a longer run goes on
from the shorter one's checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
RUN_FILE = "run.json"
# Settings a run may change and still go on from its checkpoints: how long it trains, how often it
# saves and logs, where it reports, how its batches are loaded.
CONTINUABLE = frozenset({"max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps",
                         "report_to", "dataloader_num_workers"})


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def is_complete_checkpoint(path: Path) -> bool:
    """The trainer state is written after the weights, optimizer and RNG states: a folder whose
    state parses, for the folder's own step, was saved to the end."""
    try:
        state = json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("global_step") == checkpoint_step(path)


def last_complete_checkpoint(checkpoints_dir: str | Path, *, before_step: int | None = None) -> str | None:
    """The newest complete `checkpoint-N` under `checkpoints_dir` (None when there is none), below
    `before_step` if given; newer incomplete ones are named in the log and left for the trainer to
    overwrite."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return None
    found = sorted(((step, p) for p in folder.iterdir() if (step := checkpoint_step(p)) is not None), reverse=True)
    for step, path in found:
        if before_step is not None and step >= before_step:
            continue
        if is_complete_checkpoint(path):
            return str(path)
        log.warning("checkpoint %s is incomplete (no complete %s: the job was killed while saving it); "
                    "not resuming from it", path, TRAINER_STATE)
    return None


def run_fingerprint(config, model_path: str, records: Sequence[dict], extra: dict | None = None) -> dict:
    """What a run's checkpoints depend on: the settings (but the step budget), the starting model
    and a digest of every record's content."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in CONTINUABLE}
    return {"settings": settings, "model": str(model_path), "records": len(records), "records_sha256": digest.hexdigest(),
            **({"extra": extra} if extra else {})}


def discard_other_runs(checkpoints_dir: str | Path, fingerprint: dict) -> list[str]:
    """Remove the checkpoints of a run with another fingerprint (or of an unrecorded one) and record
    this run's; returns the removed folders' names."""
    from groundflow.io.artifacts import atomic_write_json

    folder = Path(checkpoints_dir)
    expected = json.loads(json.dumps(fingerprint, default=str))  # as it reads back from the file
    try:
        recorded = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        recorded = None
    removed = []
    if recorded != expected and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if checkpoint_step(path) is not None:
                shutil.rmtree(path)
                removed.append(path.name)
        if removed:
            changed = sorted(k for k in set(expected) | set(recorded or {})
                             if (recorded or {}).get(k) != expected.get(k)) if recorded else ["no record of its run"]
            log.warning("removed checkpoints %s of another run (differs in %s): training starts over", removed, changed)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / RUN_FILE, expected)
    return removed
