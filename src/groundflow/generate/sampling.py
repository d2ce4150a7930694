"""Nucleus (top-p) filtering that keeps exactly the tokens transformers' TopPLogitsWarper keeps, at a
fraction of its cost on a CPU.

TopPLogitsWarper sorts every row with its indices (`torch.sort`), takes the softmax of the sorted
logits, its cumulative sum, and removes the tokens at the sorted positions whose cumulative mass
is <= 1 - top_p. On a CPU that sort takes a large part of batched sampling with a small model
(about half for the tiny LLaVA at 64 rows): torch sorts (value, index) pairs, about ten times
slower than numpy sorts the values alone (numpy's SIMD sort).

The indices are not needed. The sorted *values* are the same whichever sort produces them, so
numpy's sort gives the very tensor transformers gets, and the same softmax and cumsum on it give,
bit for bit, the same cumulative masses and the same count k of removed positions. Those
positions hold the k smallest logits, so the removed tokens are those below the (k+1)-th smallest
value. Only where that value equals the k-th (a tie across the boundary, where transformers' choice
follows its sort's order among equal logits) does a row go through TopPLogitsWarper itself. The
masked scores, and so the sampled tokens, are identical to TopPLogitsWarper's. Small batches (a
few rows of a small vocabulary), other devices and other dtypes go to TopPLogitsWarper directly.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


class NucleusLogitsWarper(LogitsProcessor):
    """TopPLogitsWarper's result from a values-only sort (see the module docstring)."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1, filter_value: float = -float("inf"), *,
                 min_fast_scores: int = 8192):
        top_p = float(top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {top_p}")
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(f"min_tokens_to_keep must be a positive integer, not {min_tokens_to_keep}")
        self.top_p = top_p
        self.min_tokens_to_keep = min_tokens_to_keep
        self.filter_value = filter_value
        self.reference = TopPLogitsWarper(top_p, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep)
        # Below this many scores (a few rows of a small vocabulary) torch's sort costs no more than
        # the values-only path, so TopPLogitsWarper itself runs.
        self.min_fast_scores = min_fast_scores
        self.rows_referred = 0  # rows the values-only path handed to TopPLogitsWarper (ties at the boundary, NaN)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if (
            scores.device.type != "cpu"  # a GPU sorts fast
            or scores.dtype != torch.float32
            or scores.dim() != 2
            or scores.numel() < max(self.min_fast_scores, 1)
        ):
            return self.reference(input_ids, scores)
        logits = scores.detach().contiguous().numpy()
        sorted_logits = np.sort(logits, axis=-1)
        # As TopPLogitsWarper computes it, with the same torch ops on the same values in the same order.
        cumulative = torch.from_numpy(sorted_logits).softmax(dim=-1).cumsum(dim=-1)
        sorted_remove = (cumulative <= (1 - self.top_p)).numpy()
        sorted_remove[..., -self.min_tokens_to_keep:] = False
        # The removed positions are a prefix (the cumulative mass never decreases); checked, not assumed.
        first_kept = np.argmin(sorted_remove, axis=-1)
        rows = np.arange(len(sorted_logits))
        kept_value = sorted_logits[rows, first_kept]
        last_removed_value = sorted_logits[rows, np.maximum(first_kept - 1, 0)]
        referred = (
            (sorted_remove.sum(axis=-1) != first_kept)
            | ((first_kept > 0) & (last_removed_value == kept_value))  # a tie across the boundary
            | np.isnan(cumulative[:, -1].numpy())
        )
        result = torch.from_numpy(np.where(logits < kept_value[:, None], np.float32(self.filter_value), logits))
        if referred.any():
            referred_rows = torch.from_numpy(np.flatnonzero(referred))
            result[referred_rows] = self.reference(
                None if input_ids is None else input_ids[referred_rows], scores[referred_rows]
            )
            self.rows_referred += len(referred_rows)
        return result


def sampling_warpers(*, do_sample: bool, temperature: float, top_p: float, top_k: int = 0) -> list[LogitsProcessor]:
    """The warpers generate() would add for these knobs, in its order (temperature, top-k, top-p),
    with top-p done the fast way.

    Passed as `logits_processor` while the GenerationConfig leaves temperature at 1, top_k at 0 and
    top_p at 1, so generate() adds none of its own. Custom processors run before generate()'s
    warpers, so a constraint passed with them still comes first, as it would with the config's own
    warpers.
    """
    if not do_sample:
        return []
    warpers: list[LogitsProcessor] = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(NucleusLogitsWarper(top_p))
    return warpers
