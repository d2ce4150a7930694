"""What the report plots read: stage shards (only the columns a plot needs) and occluded images."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from groundflow.io.artifacts import read_table
from groundflow.vision.image_io import load_rgb


def read_shards(paths: Sequence[str | os.PathLike], columns: list[str]) -> pd.DataFrame:
    """The named columns of every shard, concatenated in the order given."""
    frames = [read_table(p, columns=columns) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def load_images(paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
    """Every image as an RGB array; an unreadable file stops the plot naming it (ImageError)."""
    return [np.asarray(load_rgb(p)) for p in paths]
