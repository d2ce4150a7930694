"""Masked-span scoring, the pure part: which tokens cover a character span, the masked ids, and
the perplexity of the true tokens there. generate/masked_lm.py runs the model; no torch here, so
method code that builds span texts stays free of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SpanText:
    """A text and the character span [start, end) of it that is to be masked and scored."""

    text: str
    start: int
    end: int


def span_token_positions(
    offsets: Sequence[tuple[int, int]], special: Sequence[int], start: int, end: int
) -> list[int]:
    """Indices of the tokens that cover characters [start, end).

    A token belongs to the span when it overlaps it. Byte-level BPE can emit the space before a
    word as a token of its own whose trimmed offsets are empty and sit at the word's first
    character; such a token belongs to the word that follows, as in the seed (which encoded
    " " + entity). Special tokens (<s>, </s>, with offsets (0, 0)) never belong to a span.
    """
    positions = []
    for index, ((tok_start, tok_end), is_special) in enumerate(zip(offsets, special)):
        if is_special:
            continue
        if tok_start < tok_end:
            inside = tok_start < end and tok_end > start
        else:
            inside = start <= tok_start < end
        if inside:
            positions.append(index)
    return positions


def mask_positions(
    input_ids: Sequence[int], positions: Sequence[int], mask_token_id: int
) -> tuple[list[int], list[int]]:
    """(masked ids, true ids at the masked positions)."""
    masked = list(input_ids)
    targets = [masked[p] for p in positions]
    for p in positions:
        masked[p] = mask_token_id
    return masked, targets


def perplexity(log_probs: Sequence[float]) -> float:
    """exp(-mean log p) over the masked tokens; NaN when nothing was masked."""
    values = np.asarray(log_probs, dtype=np.float64)
    if values.size == 0:
        return math.nan
    return float(np.exp(-values.mean()))
