"""What the report plots read besides stage shards (`io.artifacts.concat_tables` with the columns a
plot needs): summaries and occluded images."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from groundflow.vision.image_io import load_rgb


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def load_images(paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
    """Every image as an RGB array; an unreadable file stops the plot naming it (ImageError)."""
    return [np.asarray(load_rgb(p)) for p in paths]
