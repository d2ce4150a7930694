"""GRPO's group-normalised advantages, the k3 KL estimator (spec §4 steps 9 and 12) and checks of a
group's completions, for our tests, logging and the selection bench; TRL's GRPOTrainer computes its
own advantages and KL in training.

Advantages: `A_i = (r_i − mean_g r) / (std_g r + eps)` over each group of `group_size` consecutive
completions of one prompt, with the unbiased (n − 1) std and eps = 1e-4, as the original and TRL's
`scale_rewards="group"` do; a group whose rewards are all equal gets all-zero advantages, which is why
a group of identical completions (spec §10.12) teaches nothing. `scale=False` leaves the centred
rewards unscaled (Dr. GRPO's choice).

Group checks: `identical_groups` counts groups whose completions are all the same text (a sampling
setting silently replaced by the model's generation defaults gives such groups, spec §10.12, so
training asserts there are none); `group_outcomes` gives the share of groups all wrong / all right by
the accuracy reward alone (the original read them off the total reward, `all_correct` as r >= 2,
which the baseline, max 1.1, can never reach, spec §10.10).

KL: `x = logp_ref − logp`, `KL = e^x − x − 1` per token, which is >= 0 and 0 where the two agree;
the original clamps x to [−10, 10] (`clamp=10.0`), TRL does not (`clamp=None`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def group_advantages(rewards: Sequence[float], group_size: int, *, eps: float = 1e-4, scale: bool = True) -> np.ndarray:
    """Advantages of completions ordered prompt by prompt, `group_size` per prompt."""
    values = np.asarray(rewards, dtype=np.float64)
    if group_size < 2:
        raise ValueError(f"a group needs at least 2 completions (unbiased std), not {group_size}")
    if values.ndim != 1 or values.size % group_size:
        raise ValueError(f"{values.size} rewards do not split into groups of {group_size}")
    groups = values.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if scale:
        centred = centred / (groups.std(axis=1, ddof=1, keepdims=True) + eps)
    return centred.reshape(-1)


def k3_kl(logp_ref: np.ndarray, logp: np.ndarray, *, clamp: float | None = None) -> np.ndarray:
    """Per-token k3 estimate of KL(policy || reference) from the realised tokens' log-probabilities."""
    x = np.asarray(logp_ref, dtype=np.float64) - np.asarray(logp, dtype=np.float64)
    if clamp is not None:
        x = np.clip(x, -clamp, clamp)
    return np.expm1(x) - x


def _groups(values: Sequence, group_size: int) -> list[Sequence]:
    if group_size < 1 or len(values) % group_size:
        raise ValueError(f"{len(values)} values do not split into groups of {group_size}")
    return [values[k:k + group_size] for k in range(0, len(values), group_size)]


def identical_groups(completions: Sequence[str], group_size: int) -> int:
    """How many groups of `group_size` consecutive completions hold one text only."""
    return sum(len(set(group)) == 1 for group in _groups(list(completions), group_size))


def group_outcomes(accuracy: Sequence[float], group_size: int) -> dict[str, float]:
    """The share of groups whose accuracy rewards are all 0 (all_wrong) and all 1 (all_correct)."""
    groups = _groups(list(accuracy), group_size)
    return {"all_wrong": sum(all(a == 0 for a in g) for g in groups) / len(groups),
            "all_correct": sum(all(a == 1 for a in g) for g in groups) / len(groups)}
