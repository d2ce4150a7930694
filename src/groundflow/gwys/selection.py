"""Reward-variance sample selection (spec §2.3; the original has no code for it, only its output).

Every pool sample has K rewards, one per rollout of a chosen policy. From their mean μ and variance σ²
(population variance, `ddof=0`: for 0/1 rewards σ² = p(1 − p)) each sample gets a class:
- "medium": σ² >= `variance_threshold` (the policy sometimes gets it right);
- "hard": lower variance and μ < `mean_threshold` (almost always wrong);
- "easy": lower variance and μ >= `mean_threshold` (almost always right).
The thresholds are unpublished, so they are settings. The Medium samples are ranked by σ²,
highest first (equal σ² in input order), and the first ceil(`keep_frac` × #Medium) are kept
(the paper: 50 %). The table lists every sample with its statistics, class, rank and kept flag
(`schemas/gwys_selection.schema.yaml`). Pure: no model, no disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

CLASSES = ("hard", "easy", "medium")
SELECTION_COLUMNS = ["id", "rollouts", "mean", "variance", "class", "rank", "kept"]


@dataclass(frozen=True)
class SelectionSettings:
    variance_threshold: float
    mean_threshold: float
    keep_frac: float = 0.5
    ddof: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.keep_frac <= 1:
            raise ValueError(f"keep_frac must be in (0, 1], not {self.keep_frac}")
        if self.variance_threshold < 0:
            raise ValueError(f"variance_threshold must be >= 0, not {self.variance_threshold}")
        if self.ddof not in (0, 1):
            raise ValueError(f"ddof is 0 (population) or 1 (sample), not {self.ddof}")


def rewards_by_sample(rollouts: pd.DataFrame, *, id_column: str = "id", reward_column: str = "reward") -> dict[str, list[float]]:
    """A long table (one row per rollout) as {sample id: its rewards}, in order of first appearance."""
    grouped: dict[str, list[float]] = {}
    for sample, reward in zip(rollouts[id_column].astype(str), rollouts[reward_column]):
        grouped.setdefault(sample, []).append(float(reward))
    return grouped


def select_by_variance(rewards: Mapping[str, Sequence[float]], settings: SelectionSettings) -> pd.DataFrame:
    """The selection table of every sample (see the module docstring)."""
    rows = []
    for sample, values in rewards.items():
        values = np.asarray(values, dtype=np.float64)
        if values.size <= settings.ddof:
            raise ValueError(f"sample {sample!r} has {values.size} rewards; its variance needs more than {settings.ddof}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"sample {sample!r} has a reward that is not a finite number")
        mean, variance = float(values.mean()), float(values.var(ddof=settings.ddof))
        if variance >= settings.variance_threshold:
            kind = "medium"
        else:
            kind = "hard" if mean < settings.mean_threshold else "easy"
        rows.append({"id": str(sample), "rollouts": int(values.size), "mean": mean, "variance": variance, "class": kind})
    table = pd.DataFrame(rows, columns=SELECTION_COLUMNS[:5])
    medium = table.index[table["class"] == "medium"]
    order = sorted(medium, key=lambda i: -table.at[i, "variance"])  # sorted() is stable: ties keep input order
    rank = pd.Series(pd.NA, index=table.index, dtype="Int64")
    rank[order] = np.arange(1, len(order) + 1)
    table["rank"] = rank
    table["kept"] = table["rank"].le(math.ceil(settings.keep_frac * len(order))).fillna(False).astype(bool)
    return table[SELECTION_COLUMNS]
