"""Answer checking by dense similarity: is a predicted answer the reference entity?

The seed encodes each instance's predictions and its label in separate calls (two model calls per
instance). Here every distinct string of a whole shard is encoded once, in one batched call, and
the per-instance cosines are gathered from that table. Both give the same numbers; the seed's way
is `answer_similarities_per_instance` in tests/reference/answers.py, for the benchmark and the
equivalence test.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from groundflow.embed.embedders import Embedder


def answer_similarities(
    embedder: Embedder, predictions: Sequence[Sequence[str]], references: Sequence[str]
) -> list[np.ndarray]:
    """Cosine of each prediction with its instance's reference, aligned with `predictions`:
    element i is a float64 array of len(predictions[i]). One encode call for all instances."""
    predictions, references = _checked(predictions, references)
    # Repeats are the norm (16 samples agree, many instances share an entity): encode each once.
    index: dict[str, int] = {}
    for preds, reference in zip(predictions, references):
        if preds:  # a reference without predictions is never compared
            index.setdefault(reference, len(index))
            for text in preds:
                index.setdefault(text, len(index))
    if not index:
        return [np.zeros(0, dtype=np.float64) for _ in predictions]
    vectors = _encode(embedder, list(index))

    counts = np.fromiter((len(p) for p in predictions), dtype=np.int64, count=len(predictions))
    pred_rows = np.fromiter((index[t] for p in predictions for t in p), dtype=np.int64, count=int(counts.sum()))
    ref_rows = np.repeat([index.get(r, -1) for r in references], counts)
    sims = np.einsum("ij,ij->i", vectors[pred_rows], vectors[ref_rows])
    return np.split(sims, np.cumsum(counts)[:-1])


def judge_correct(similarities: Sequence[Sequence[float]], threshold: float) -> list[np.ndarray]:
    """Boolean arrays aligned with `similarities`: correct = similarity strictly above
    `threshold` (the seed: > 0.85). A NaN similarity is never correct."""
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    return [np.asarray(s, dtype=np.float64) > threshold for s in similarities]


def _checked(predictions, references) -> tuple[list[list[str]], list[str]]:
    if isinstance(references, str):
        raise TypeError("references must be a sequence of strings, one per instance, not one string")
    predictions = [_string_list(p, f"predictions[{i}]") for i, p in enumerate(predictions)]
    references = list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} prediction lists but {len(references)} references")
    for i, r in enumerate(references):
        if not isinstance(r, str):
            raise TypeError(f"references[{i}] is {type(r).__name__}, not str")
    return predictions, references


def _string_list(items, where: str) -> list[str]:
    if isinstance(items, str):
        raise TypeError(f"{where} must be a list of strings, not one string")
    items = list(items)
    for j, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"{where}[{j}] is {type(t).__name__}, not str")
    return items


def _encode(embedder: Embedder, texts: list[str]) -> np.ndarray:
    vectors = np.asarray(embedder.encode(texts), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
    return vectors
