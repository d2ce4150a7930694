"""Dense retrieval over a passage corpus through any `Embedder`: embed passages and queries in
batches, then the top-k passages of each query by score.

The score is the dot product of the embedder's float32 unit rows, i.e. cosine similarity. (A
retriever trained for the unnormalised dot product, Contriever, ranks by a score that also grows
with the passage vector's norm; through these embedders it ranks by cosine instead.)

`top_k` is the pure core (arrays in, indices and scores out): it scores one block of queries
against one block of the corpus at a time and keeps a running top-k, so memory is bounded by the
block sizes and k, not by queries x corpus. Equal scores are ordered by the lower corpus index,
whatever order numpy's partial sort visits them in, so the same vectors give the same ranking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from groundflow.embed.embedders import Embedder

log = logging.getLogger(__name__)

# A block of 256 queries x 65,536 passages is 64 MiB of float32 scores.
QUERY_BLOCK = 256
CORPUS_BLOCK = 65_536
UNIT_NORM_TOLERANCE = 1e-3


def _check_vectors(name: str, vectors: np.ndarray) -> np.ndarray:
    if vectors.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows = texts), got shape {vectors.shape}")
    if vectors.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {vectors.dtype}")
    return vectors


def _block_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a (q, c) block, the column indices of its k best scores, best first, equal
    scores in column order, and those scores. k <= c."""
    q, c = scores.shape
    if k < c:
        # The k-th best value of each row; every score above it is in, and the first
        # (k - how many are above) of the scores equal to it, by column, fill the rest.
        kth = np.partition(scores, c - k, axis=1)[:, c - k][:, None]
        above = scores > kth
        equal = scores == kth
        room = k - above.sum(axis=1, keepdims=True)
        chosen = above | (equal & (np.cumsum(equal, axis=1) <= room))
        columns = np.nonzero(chosen)[1].reshape(q, k)  # row-major: ascending columns per row
    else:
        columns = np.broadcast_to(np.arange(c), (q, c))
    picked = np.take_along_axis(scores, columns, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")  # stable: equal scores keep column order
    return np.take_along_axis(columns, order, axis=1), np.take_along_axis(picked, order, axis=1)


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, *, query_block: int = QUERY_BLOCK,
          corpus_block: int = CORPUS_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64, scores float32), each (n_queries, min(k, n_corpus)): the corpus rows with the
    highest dot product per query, best first, equal scores by lower corpus index.

    `corpus` may be a numpy memmap: it is read one block of rows at a time.
    """
    queries, corpus = _check_vectors("queries", np.asarray(queries)), _check_vectors("corpus", corpus)
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    if query_block < 1 or corpus_block < 1:
        raise ValueError(f"block sizes must be positive, not {query_block} x {corpus_block}")
    if len(queries) and len(corpus) and queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]}, the corpus {corpus.shape[1]}")
    n_q, n_c = len(queries), len(corpus)
    k_eff = min(k, n_c)
    indices = np.zeros((n_q, k_eff), dtype=np.int64)
    scores = np.zeros((n_q, k_eff), dtype=np.float32)
    for q0 in range(0, n_q, query_block):
        block_q = queries[q0:q0 + query_block]
        best_idx = np.zeros((len(block_q), 0), dtype=np.int64)
        best_score = np.zeros((len(block_q), 0), dtype=np.float32)
        for c0 in range(0, n_c, corpus_block):
            block_c = np.asarray(corpus[c0:c0 + corpus_block])
            block_scores = block_q @ block_c.T
            if not np.isfinite(block_scores).all():
                raise ValueError(f"non-finite scores for queries {q0}.. against passages {c0}..: "
                                 "a vector holds NaN or inf")
            idx, sc = _block_top_k(block_scores, min(k_eff, block_c.shape[0]))
            # Merge with the running best: candidates come from disjoint index ranges, so sorting
            # by (-score, index) and keeping k is the top-k of both.
            cand_idx = np.concatenate([best_idx, idx + c0], axis=1)
            cand_score = np.concatenate([best_score, sc], axis=1)
            order = np.lexsort((cand_idx, -cand_score), axis=1)[:, :k_eff]
            best_idx = np.take_along_axis(cand_idx, order, axis=1)
            best_score = np.take_along_axis(cand_score, order, axis=1)
        indices[q0:q0 + len(block_q)] = best_idx
        scores[q0:q0 + len(block_q)] = best_score
    return indices, scores


def embed_texts(embedder: "Embedder", texts: Sequence[str], *, batch_size: int,
                out: np.ndarray | None = None, what: str = "texts") -> np.ndarray:
    """The embedder's vectors of `texts`, `batch_size` texts per `encode` call (progress is logged
    per batch, and a large corpus never sits in one call's buffers); written into `out` (e.g. a
    memmap of shape (len(texts), d)) when given. Each batch is checked: float32 unit rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    texts = list(texts)
    parts: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        vectors = np.asarray(embedder.encode(batch))
        if vectors.shape[0] != len(batch) or vectors.ndim != 2:
            raise ValueError(f"embedder returned shape {vectors.shape} for {len(batch)} {what}")
        if vectors.dtype != np.float32:
            raise TypeError(f"embedder returned {vectors.dtype}, not float32")
        norms = np.linalg.norm(vectors, axis=1)
        if not np.all(np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE):
            bad = int(np.argmax(np.abs(norms - 1.0)))
            raise ValueError(f"embedder row {start + bad} of the {what} has norm {norms[bad]:.4f}, not 1")
        if out is not None:
            out[start:start + len(batch)] = vectors
        else:
            parts.append(vectors)
        log.info("embedded %d/%d %s", min(start + batch_size, len(texts)), len(texts), what)
    if out is not None:
        return out
    if parts:
        return np.concatenate(parts, axis=0)
    # no texts: an empty call gives the (0, d) shape (every Embedder answers it)
    empty = np.asarray(embedder.encode([]), dtype=np.float32)
    return empty if empty.ndim == 2 else empty.reshape(0, 0)


@dataclass
class DenseRetriever:
    """A corpus embedded once, searched by query texts."""

    embedder: "Embedder"
    passage_vectors: np.ndarray
    batch_size: int = 256

    @classmethod
    def build(cls, embedder: "Embedder", passages: Sequence[str], *, batch_size: int = 256,
              out: np.ndarray | None = None) -> "DenseRetriever":
        vectors = embed_texts(embedder, passages, batch_size=batch_size, out=out, what="passages")
        return cls(embedder=embedder, passage_vectors=vectors, batch_size=batch_size)

    def search(self, queries: Sequence[str], k: int, **blocks) -> tuple[np.ndarray, np.ndarray]:
        """(indices into the passages, scores), best first; see `top_k`."""
        query_vectors = embed_texts(self.embedder, queries, batch_size=self.batch_size, what="queries")
        return top_k(query_vectors, self.passage_vectors, k, **blocks)

    def describe(self) -> dict:
        return {"embedder": self.embedder.describe(), "score": "dot product of unit vectors (cosine)",
                "batch_size": self.batch_size, "passages": int(len(self.passage_vectors))}


__all__ = ["CORPUS_BLOCK", "DenseRetriever", "QUERY_BLOCK", "embed_texts", "top_k"]
