"""GRPO's group-normalised advantages and the k3 KL estimator (spec §4 steps 9 and 12), for our checks
and the selection bench; TRL's GRPOTrainer computes its own in training.

Advantages: `A_i = (r_i − mean_g r) / (std_g r + eps)` over each group of `group_size` consecutive
completions of one prompt, with the unbiased (n − 1) std and eps = 1e-4, as the original and TRL's
`scale_rewards="group"` do; a group whose rewards are all equal gets all-zero advantages, which is why
a group of identical completions (spec §10.12) teaches nothing. `scale=False` leaves the centred
rewards unscaled (Dr. GRPO's choice).

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
