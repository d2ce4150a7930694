"""Which of a training run's checkpoints a restarted job may resume from.

transformers writes a checkpoint folder file by file, `trainer_state.json` last, and picks the
newest `checkpoint-N` folder whatever it holds; a job killed while saving would leave a folder
that every later resume trips over. Here only a checkpoint whose trainer state is complete counts.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


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
