"""Reward-variance selection's model side (spec §2.3): K rollouts per RL pool sample, their rule
rewards, and the selection's outputs (the original has no code for it, only its result).

Rollouts: every pool sample is asked in the chosen policy's output form (`gwys.asking`) through
the shared vision generator, K samples per prompt in one call (the generator batches several
samples' prompts, each prompt's pass shared by its K rows). Sampling is stated in full, never
left to the checkpoint (spec §10.12: Qwen2.5-VL's generation_config has top_k 1, temperature 0.1,
which would give K identical completions and zero variance): temperature 1.0, top_p 0.95, top_k 50,
repetition_penalty 1.0, as the original's training rollouts. Each completion's reward is the rule
accuracy (`gwys.rewards.AccuracyReward`) plus `format_weight` x the format reward (0: accuracy
alone; 0.1: as training mixes them). A group whose K completions are one text is counted and
logged: under sampling it means the settings did not reach the model.

The rollouts table (`schemas/gwys_rollouts`) holds one row per sample: its K completions and
their rewards. Selection (`select_pool`) reads it with the pool: the selection table of every
rolled-out sample (`gwys.selection.select_by_variance`) and the kept pool rows, the GRPO pool.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from groundflow.generate.backends import SamplingParams, check_result_shape
from groundflow.gwys.asking import ask_rows, options_list
from groundflow.gwys.prompts import QuestionPrompts, check_form
from groundflow.gwys.rewards import AccuracyReward, FormatReward, check_rules, weighted_total
from groundflow.gwys.selection import SelectionSettings, select_by_variance
from groundflow.io.stage import StageResult, rejects_frame

if TYPE_CHECKING:
    from groundflow.generate.backends import Generator

log = logging.getLogger(__name__)

ROLLOUT_STAGE = "gwys_rollouts"
SELECT_STAGE = "gwys_select"
ROLLOUT_COLUMNS = ["id", "completions", "accuracy", "format", "reward", "mean", "distinct"]


@dataclass(frozen=True)
class RolloutSettings:
    k: int = 64  # rollouts per sample (the paper; the small-model plan suggests 16)
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    max_new_tokens: int = 768
    seed: int = 0
    form: str = "four_tag"  # the policy's output form: four_tag (SFT model) or think_answer (base)
    format_weight: float = 0.0  # reward = accuracy + format_weight x format
    rules: str = "fixed"  # answer comparison, gwys.rewards.RULES

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"k must be >= 2: a reward variance needs at least two rollouts, not {self.k}")
        if self.format_weight < 0:
            raise ValueError(f"format_weight must be >= 0, not {self.format_weight}")
        check_form(self.form)
        check_rules(self.rules)
        self.sampling()  # the sampling values are checked where they are used

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "RolloutSettings":
        values = dict(values or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown rollout settings {sorted(unknown)}; known: {sorted(f.name for f in fields(cls))}")
        return cls(**values)

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, n=self.k, do_sample=True,
                              temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              repetition_penalty=self.repetition_penalty, seed=self.seed)

    def describe(self) -> dict:
        return asdict(self)


def score_group(completions: list[str], row, settings: RolloutSettings) -> dict[str, list[float]]:
    """Accuracy, format and total reward of one sample's completions (TRL's reward callables,
    called as GRPO calls them: the sample's columns repeated per completion)."""
    n = len(completions)
    columns = {"solution": [str(row.solution)] * n, "problem_type": [str(row.problem_type)] * n,
               "options": [options_list(row.options)] * n}
    accuracy = AccuracyReward(settings.rules)(completions, **columns)
    form = FormatReward(settings.form)(completions, **columns)
    reward = weighted_total([accuracy, form], [1.0, settings.format_weight])
    return {"accuracy": accuracy, "format": form, "reward": reward}


def roll_out(records: pd.DataFrame, generator: "Generator", settings: RolloutSettings, prompts: QuestionPrompts,
             media_root: str | Path) -> StageResult:
    """K rewarded rollouts of every pool sample in `records` (one generate() call); a sample whose
    image cannot be read, or a video sample, is rejected with the reason."""
    if prompts.form != settings.form:
        raise ValueError(f"the rollout prompts are in the {prompts.form} form, the settings ask for {settings.form}")
    asked = ask_rows(records, prompts, media_root)
    params = settings.sampling()
    outputs = generator.generate(asked.prompts, params) if asked.prompts else []
    check_result_shape(outputs, asked.prompts, params.n)
    rows = []
    for row, completions in zip(asked.rows.itertuples(index=False), outputs):
        scored = score_group(list(completions), row, settings)
        rows.append({"id": str(row.id), "completions": list(completions), **scored,
                     "mean": float(np.mean(scored["reward"])), "distinct": len(set(completions))})
    kept = pd.DataFrame(rows, columns=ROLLOUT_COLUMNS)
    identical = int((kept["distinct"] == 1).sum())
    if identical:
        log.warning("%d of %d samples got %d identical completions: sampling at temperature %g should not repeat "
                    "itself (spec §10.12); check the generator's settings", identical, len(kept), settings.k,
                    settings.temperature)
    return StageResult(kept=kept, rejects=rejects_frame(ROLLOUT_STAGE, asked.rejected))


# ---------------------------------------------------------------------------------------------
# selection


def rollout_rewards(rollouts: pd.DataFrame) -> dict[str, list[float]]:
    """{sample id: its rollouts' rewards}, in table order; a sample listed twice is an error."""
    duplicated = rollouts["id"][rollouts["id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"samples rolled out twice (shards overlap?): {duplicated[:5]}")
    return {str(i): [float(r) for r in rewards] for i, rewards in zip(rollouts["id"], rollouts["reward"])}


@dataclass
class Selection:
    table: pd.DataFrame  # schemas/gwys_selection: every rolled-out sample
    train_pool: pd.DataFrame  # the kept pool rows (schemas/gwys_pool), pool order
    summary: dict


def select_pool(pool: pd.DataFrame, rollouts: pd.DataFrame, settings: SelectionSettings) -> Selection:
    """The selection over the rolled-out samples of `pool` and the kept pool rows.

    Every rolled-out sample must be a pool row; pool rows without rollouts (rejected by the
    rollout stage, listed in its rejects) are counted as `not_rolled_out`. Keeping no sample at all
    is an error naming the classes found: GRPO would have nothing to train on.
    """
    pool_ids = pool["id"].astype(str)
    unknown = sorted(set(rollouts["id"].astype(str)) - set(pool_ids))
    if unknown:
        raise ValueError(f"rolled-out samples not in the pool: {unknown[:5]}")
    table = select_by_variance(rollout_rewards(rollouts), settings)
    kept_ids = set(table.loc[table["kept"], "id"])
    train_pool = pool[pool_ids.isin(kept_ids)].reset_index(drop=True)
    by_class = {kind: int((table["class"] == kind).sum()) for kind in ("hard", "easy", "medium")}
    summary = {"pool": len(pool), "rolled_out": len(table), "not_rolled_out": len(pool) - len(table),
               "by_class": by_class, "kept": len(train_pool), "settings": asdict(settings),
               "identical_groups": int((rollouts["distinct"] == 1).sum()) if "distinct" in rollouts else None,
               "mean_reward": float(table["mean"].mean()) if len(table) else None}
    if train_pool.empty:
        raise ValueError(f"the selection keeps no sample: of {len(table)} rolled-out samples {by_class} "
                         f"(variance_threshold {settings.variance_threshold}, mean_threshold "
                         f"{settings.mean_threshold}); with no Medium sample GRPO has nothing to train on")
    return Selection(table=table, train_pool=train_pool, summary=summary)
