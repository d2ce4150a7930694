"""Dense retrieval over a passage corpus through any `Embedder`: embed passages and queries in
batches, then the top-k passages of each query by score.

The score is the dot product of the embedder's float32 unit rows, i.e. cosine similarity. (A
retriever trained for the unnormalised dot product, Contriever, ranks by a score that also grows
with the passage vector's norm; through these embedders it ranks by cosine instead.)

`top_k` is the pure core (arrays in, indices and scores out): it scores one block of queries
against one block of the corpus at a time and keeps a running top-k, so memory is bounded by the
block sizes and k, not by queries x corpus. Equal scores are ordered by the lower corpus index,
whatever order numpy's partial sort visits them in, so the same vectors give the same ranking.

Passages are embedded in memory (`embed_texts`) or, for a corpus of millions, into a `.npy` file
with a progress record (`embed_to_file`): a killed job resumes after its last checkpoint, and the
finished file is searched as a memmap, one corpus block at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from groundflow.io.artifacts import atomic_write_json
from groundflow.io.stage import fingerprint

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
        columns = np.argpartition(scores, c - k, axis=1)[:, c - k:]
        picked = np.take_along_axis(scores, columns, axis=1)
        kth = picked.min(axis=1, keepdims=True)
        # argpartition picks any of the scores equal to the k-th best; a row with more of them in
        # the block than it picked is redone exactly: all scores above the k-th best, then the
        # first (by column) of those equal to it. Rare with real-valued scores.
        unfair = np.flatnonzero((scores == kth).sum(axis=1) > (picked == kth).sum(axis=1))
        if len(unfair):
            rows, row_kth = scores[unfair], kth[unfair]
            above, equal = rows > row_kth, rows == row_kth
            room = k - above.sum(axis=1, keepdims=True)
            chosen = above | (equal & (np.cumsum(equal, axis=1) <= room))
            columns[unfair] = np.nonzero(chosen)[1].reshape(len(unfair), k)
        columns.sort(axis=1)  # ascending columns, so the stable sort below keeps ties in column order
    else:
        columns = np.broadcast_to(np.arange(c), (q, c))
    picked = np.take_along_axis(scores, columns, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
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


def _checked_batch(embedder: "Embedder", batch: list[str], start: int, what: str) -> np.ndarray:
    vectors = np.asarray(embedder.encode(batch))
    if vectors.shape[0] != len(batch) or vectors.ndim != 2:
        raise ValueError(f"embedder returned shape {vectors.shape} for {len(batch)} {what}")
    if vectors.dtype != np.float32:
        raise TypeError(f"embedder returned {vectors.dtype}, not float32")
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all(np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE):
        bad = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"embedder row {start + bad} of the {what} has norm {norms[bad]:.4f}, not 1")
    return vectors


def _log_progress(done: int, total: int, batch_size: int, what: str) -> None:
    # about a hundred lines for a corpus of millions, every batch for a small one
    every = max(1, total // batch_size // 100) * batch_size
    if done == total or done % every < batch_size:
        log.info("embedded %d/%d %s", done, total, what)


def embed_texts(embedder: "Embedder", texts: Sequence[str], *, batch_size: int,
                out: np.ndarray | None = None, what: str = "texts") -> np.ndarray:
    """The embedder's vectors of `texts`, `batch_size` texts per `encode` call (progress is logged,
    and a large corpus never sits in one call's buffers); written into `out` (e.g. a memmap of
    shape (len(texts), d)) when given. Each batch is checked: float32 unit rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    texts = list(texts)
    parts: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        vectors = _checked_batch(embedder, texts[start:start + batch_size], start, what)
        if out is not None:
            out[start:start + len(vectors)] = vectors
        else:
            parts.append(vectors)
        _log_progress(start + len(vectors), len(texts), batch_size, what)
    if out is not None:
        return out
    if parts:
        return np.concatenate(parts, axis=0)
    return _empty_vectors(embedder)


def _empty_vectors(embedder: "Embedder") -> np.ndarray:
    # an empty call gives the (0, d) shape (every Embedder answers it)
    empty = np.asarray(embedder.encode([]), dtype=np.float32)
    return empty if empty.ndim == 2 else empty.reshape(0, 0)


def texts_digest(texts: Sequence[str]) -> str:
    """A hash of the texts in order (a changed, added or moved passage changes it)."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


VECTORS_FILE = "vectors.npy"
PROGRESS_FILE = "progress.json"


def embed_to_file(embedder: "Embedder", texts: Sequence[str], folder: str | Path, *, batch_size: int,
                  produced_by: dict, checkpoint_every: int = 64, what: str = "passages") -> np.ndarray:
    """`embed_texts` into `folder/vectors.npy`, resumable; returns it as a read-only memmap.

    A corpus of millions of passages is hours of embedding and tens of GB of vectors: they go to
    disk as they come, and `progress.json` records how many rows are flushed (every
    `checkpoint_every` batches). A restarted job whose texts and `produced_by` (the embedder's
    description) are unchanged continues after the last recorded row, so it loses at most
    `checkpoint_every` batches; anything else starts over.
    """
    if batch_size < 1 or checkpoint_every < 1:
        raise ValueError(f"batch_size {batch_size} and checkpoint_every {checkpoint_every} must be positive")
    texts = list(texts)
    folder = Path(folder)
    vectors_path, progress_path = folder / VECTORS_FILE, folder / PROGRESS_FILE
    key = fingerprint({"produced_by": produced_by, "texts": texts_digest(texts), "n": len(texts)})
    done, vectors = 0, None
    if progress_path.is_file() and vectors_path.is_file():
        progress = json.loads(progress_path.read_text())
        if progress.get("fingerprint") == key:
            done = int(progress["done"])
            vectors = np.load(vectors_path, mmap_mode="r+")
            log.info("resuming the %s' embedding at %d/%d from %s", what, done, len(texts), folder)
        else:
            log.info("embeddings in %s are of other texts or another embedder; starting over", folder)
    if vectors is None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        if not texts:
            np.save(vectors_path, _empty_vectors(embedder))
            atomic_write_json(progress_path, {"fingerprint": key, "done": 0, "n": 0})
            return np.load(vectors_path, mmap_mode="r")
        first = _checked_batch(embedder, texts[:batch_size], 0, what)
        vectors = np.lib.format.open_memmap(vectors_path, mode="w+", dtype=np.float32,
                                            shape=(len(texts), first.shape[1]))
        vectors[:len(first)] = first
        done = len(first)
        _log_progress(done, len(texts), batch_size, what)
    since_checkpoint = 0
    while True:
        since_checkpoint += 1
        if done == len(texts) or since_checkpoint >= checkpoint_every:
            # rows first, then the count that vouches for them
            vectors.flush()
            atomic_write_json(progress_path, {"fingerprint": key, "done": done, "n": len(texts),
                                              "produced_by": produced_by})
            since_checkpoint = 0
        if done == len(texts):
            break
        batch = _checked_batch(embedder, texts[done:done + batch_size], done, what)
        vectors[done:done + len(batch)] = batch
        done += len(batch)
        _log_progress(done, len(texts), batch_size, what)
    del vectors
    return np.load(vectors_path, mmap_mode="r")


@dataclass
class DenseRetriever:
    """A corpus embedded once, searched by query texts."""

    embedder: "Embedder"
    passage_vectors: np.ndarray
    batch_size: int = 256

    @classmethod
    def build(cls, embedder: "Embedder", passages: Sequence[str], *, batch_size: int = 256,
              vectors_dir: str | Path | None = None, checkpoint_every: int = 64) -> "DenseRetriever":
        """Embed `passages`: in memory, or with `vectors_dir` to a resumable file read back as a
        memmap (see `embed_to_file`), for a corpus larger than memory or hours to embed."""
        if vectors_dir is None:
            vectors = embed_texts(embedder, passages, batch_size=batch_size, what="passages")
        else:
            vectors = embed_to_file(embedder, passages, vectors_dir, batch_size=batch_size,
                                    produced_by=embedder.describe(), checkpoint_every=checkpoint_every)
        return cls(embedder=embedder, passage_vectors=vectors, batch_size=batch_size)

    def search(self, queries: Sequence[str], k: int, **blocks) -> tuple[np.ndarray, np.ndarray]:
        """(indices into the passages, scores), best first; see `top_k`."""
        query_vectors = embed_texts(self.embedder, queries, batch_size=self.batch_size, what="queries")
        return top_k(query_vectors, self.passage_vectors, k, **blocks)

    def describe(self) -> dict:
        return {"embedder": self.embedder.describe(), "score": "dot product of unit vectors (cosine)",
                "batch_size": self.batch_size, "passages": int(len(self.passage_vectors))}


__all__ = ["CORPUS_BLOCK", "DenseRetriever", "QUERY_BLOCK", "embed_texts", "embed_to_file", "texts_digest", "top_k"]
