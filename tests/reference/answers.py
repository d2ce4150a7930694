"""The seed's answer checking, one encode call per instance's predictions and one per its
reference: the baseline of bench/answer_check.py and what the batched
`groundflow.judge.answers.answer_similarities` is tested equal to."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from groundflow.embed.embedders import Embedder

# The batched path's own input checks and encoding, so the two differ only in how they call the embedder.
from groundflow.judge.answers import _checked, _encode


def answer_similarities_per_instance(
    embedder: Embedder, predictions: Sequence[Sequence[str]], references: Sequence[str]
) -> list[np.ndarray]:
    """The seed's way, for the benchmark baseline: per instance, one encode call for its
    predictions and one for its reference."""
    predictions, references = _checked(predictions, references)
    out = []
    for preds, reference in zip(predictions, references):
        if not preds:
            out.append(np.zeros(0, dtype=np.float64))
            continue
        pred_vectors = _encode(embedder, preds)
        ref_vector = _encode(embedder, [reference])[0]
        out.append(pred_vectors @ ref_vector)
    return out
