"""The dense retriever's pure core: blocked top-k by dot product with ties by lower corpus index,
and batched embedding checks, on plain arrays (no model)."""

import json

import numpy as np
import pytest

from groundflow.embed.retrieval import DenseRetriever, embed_texts, embed_to_file, top_k


def brute_force(queries, corpus, k):
    """Every score, sorted by (-score, index): the definition top_k must meet."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(len(corpus)), scores.shape), -scores), axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def integer_vectors(rng, n, d, high=3):
    # small integers: every dot product is exact in float32, whatever order BLAS sums in
    return rng.integers(-high, high + 1, size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("query_block,corpus_block", [(1, 1), (3, 5), (7, 64), (256, 65536)])
@pytest.mark.parametrize("k", [1, 4, 40, 100])
def test_top_k_is_the_exact_ranking_with_ties_by_lower_index(query_block, corpus_block, k):
    rng = np.random.default_rng(0)
    corpus = integer_vectors(rng, 40, 4, high=1)  # 3**4 = 81 possible rows: many equal scores
    corpus = np.concatenate([corpus, corpus[:10]])  # and exact duplicates, later in the corpus
    queries = integer_vectors(rng, 9, 4, high=1)
    indices, scores = top_k(queries, corpus, k, query_block=query_block, corpus_block=corpus_block)
    expected_idx, expected_scores = brute_force(queries, corpus, k)
    assert indices.shape == scores.shape == (9, min(k, 50))
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(indices, expected_idx)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))


def test_ties_straddling_the_kth_place_keep_the_lowest_indices():
    corpus = np.array([[0.0], [1.0], [1.0], [2.0], [1.0], [1.0]], dtype=np.float32)
    query = np.array([[1.0]], dtype=np.float32)
    # the best is index 3; the next two places go to the first two of the four 1.0s, not any two
    for corpus_block in (1, 2, 4, 6):
        indices, scores = top_k(query, corpus, 3, corpus_block=corpus_block)
        assert indices.tolist() == [[3, 1, 2]], corpus_block
        assert scores.tolist() == [[2.0, 1.0, 1.0]]


def test_top_k_on_real_valued_vectors_matches_brute_force():
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((300, 16)).astype(np.float32)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    indices, scores = top_k(queries, corpus, 10, query_block=6, corpus_block=50)
    expected_idx, expected_scores = brute_force(queries, corpus, 10)
    np.testing.assert_array_equal(indices, expected_idx)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_top_k_reads_a_memmapped_corpus(tmp_path):
    rng = np.random.default_rng(2)
    vectors = integer_vectors(rng, 100, 8)
    stored = np.lib.format.open_memmap(tmp_path / "corpus.npy", mode="w+", dtype=np.float32, shape=vectors.shape)
    stored[:] = vectors
    stored.flush()
    reopened = np.load(tmp_path / "corpus.npy", mmap_mode="r")
    queries = integer_vectors(rng, 5, 8)
    np.testing.assert_array_equal(top_k(queries, reopened, 7, corpus_block=13)[0], brute_force(queries, vectors, 7)[0])


def test_top_k_edge_cases():
    corpus = np.eye(3, dtype=np.float32)
    no_queries = np.zeros((0, 3), dtype=np.float32)
    indices, scores = top_k(no_queries, corpus, 2)
    assert indices.shape == scores.shape == (0, 2)
    indices, _ = top_k(np.ones((2, 3), np.float32), np.zeros((0, 3), np.float32), 5)
    assert indices.shape == (2, 0)


@pytest.mark.parametrize("queries,corpus,k,error,match", [
    (np.ones((1, 3), np.float32), np.ones((2, 4), np.float32), 1, ValueError, "dimension"),
    (np.ones((1, 3), np.float64), np.ones((2, 3), np.float32), 1, TypeError, "float32"),
    (np.ones(3, np.float32), np.ones((2, 3), np.float32), 1, ValueError, "2-D"),
    (np.ones((1, 3), np.float32), np.ones((2, 3), np.float32), 0, ValueError, "k must be"),
    (np.ones((1, 3), np.float32), np.array([[1, np.nan, 0], [1, 0, 0]], np.float32), 1, ValueError, "non-finite"),
])
def test_top_k_refuses_bad_input(queries, corpus, k, error, match):
    with pytest.raises(error, match=match):
        top_k(queries, corpus, k)


class HashEmbedder:
    """A deterministic Embedder for the batching logic: one-hot rows keyed by text length, plus a
    log of the batch sizes it was called with."""

    def __init__(self, dimension=8, scale=1.0):
        self.dimension, self.scale, self.calls = dimension, scale, []

    def encode(self, texts):
        self.calls.append(len(texts))
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            vectors[row, len(text) % self.dimension] = self.scale
        return vectors

    def describe(self):
        return {"backend": "test-hash", "dimension": self.dimension}


def test_embed_texts_batches_and_fills_a_preallocated_array():
    embedder = HashEmbedder()
    texts = ["a" * n for n in range(11)]
    vectors = embed_texts(embedder, texts, batch_size=4)
    assert embedder.calls == [4, 4, 3]
    assert vectors.shape == (11, 8) and vectors.dtype == np.float32
    assert vectors[9].argmax() == 1
    out = np.full((11, 8), -1.0, dtype=np.float32)
    assert embed_texts(HashEmbedder(), texts, batch_size=5, out=out) is out
    np.testing.assert_array_equal(out, vectors)
    assert embed_texts(embedder, [], batch_size=4).shape == (0, 8)


def test_embed_texts_refuses_rows_that_are_not_unit_vectors():
    with pytest.raises(ValueError, match="norm 2.0000"):
        embed_texts(HashEmbedder(scale=2.0), ["x", "yy"], batch_size=2)


def test_dense_retriever_searches_its_corpus_and_describes_the_embedder():
    retriever = DenseRetriever.build(HashEmbedder(), ["", "a", "bb", "ccc"], batch_size=3)
    indices, scores = retriever.search(["zz", "q"], k=2)
    # "zz" has length 2, as "bb" (index 2); the rest score 0, the lowest index first
    assert indices.tolist() == [[2, 0], [1, 0]]
    assert scores.tolist() == [[1.0, 0.0], [1.0, 0.0]]
    info = retriever.describe()
    assert info["embedder"]["backend"] == "test-hash" and info["passages"] == 4


def test_an_empty_corpus_gives_every_query_an_empty_ranking():
    retriever = DenseRetriever.build(HashEmbedder(), [], batch_size=3)
    assert retriever.passage_vectors.shape == (0, 8)
    indices, scores = retriever.search(["a", "bb"], k=4)
    assert indices.shape == scores.shape == (2, 0)


class Killed(RuntimeError):
    pass


class DyingEmbedder(HashEmbedder):
    """Dies on its `die_at`-th encode call, as a pre-empted job would."""

    def __init__(self, die_at):
        super().__init__()
        self.die_at = die_at

    def encode(self, texts):
        if len(self.calls) + 1 == self.die_at:
            raise Killed("pre-empted")
        return super().encode(texts)


TEXTS = ["a" * n for n in range(11)]


def test_embedding_to_a_file_resumes_after_the_last_checkpoint(tmp_path):
    folder = tmp_path / "vectors"
    expected = embed_texts(HashEmbedder(), TEXTS, batch_size=2)
    with pytest.raises(Killed):
        embed_to_file(DyingEmbedder(die_at=4), TEXTS, folder, batch_size=2, produced_by={"m": 1},
                      checkpoint_every=2)
    # batches 1-3 were embedded; the checkpoint after batch 2 vouches for 4 rows
    assert json.loads((folder / "progress.json").read_text())["done"] == 4
    resumed = HashEmbedder()
    vectors = embed_to_file(resumed, TEXTS, folder, batch_size=2, produced_by={"m": 1}, checkpoint_every=2)
    assert resumed.calls == [2, 2, 2, 1]  # rows 4..10 only
    assert isinstance(vectors, np.memmap) and not vectors.flags.writeable
    np.testing.assert_array_equal(vectors, expected)
    finished = HashEmbedder()
    np.testing.assert_array_equal(
        embed_to_file(finished, TEXTS, folder, batch_size=2, produced_by={"m": 1}), expected)
    assert finished.calls == []  # a finished file is reused whole


@pytest.mark.parametrize("texts,produced_by", [(TEXTS[:-1] + ["changed"], {"m": 1}), (TEXTS, {"m": 2})])
def test_embedding_to_a_file_starts_over_for_other_texts_or_another_embedder(tmp_path, texts, produced_by):
    folder = tmp_path / "vectors"
    embed_to_file(HashEmbedder(), TEXTS, folder, batch_size=4, produced_by={"m": 1})
    again = HashEmbedder()
    vectors = embed_to_file(again, texts, folder, batch_size=4, produced_by=produced_by)
    assert again.calls == [4, 4, 3]
    np.testing.assert_array_equal(vectors, embed_texts(HashEmbedder(), texts, batch_size=4))


def test_a_retriever_over_a_vectors_file_ranks_as_one_in_memory(tmp_path):
    in_memory = DenseRetriever.build(HashEmbedder(), TEXTS, batch_size=3)
    on_disk = DenseRetriever.build(HashEmbedder(), TEXTS, batch_size=3, vectors_dir=tmp_path / "v")
    queries = ["zz", "q", "abcdefg"]
    for a, b in zip(in_memory.search(queries, 4, corpus_block=5), on_disk.search(queries, 4, corpus_block=5)):
        np.testing.assert_array_equal(a, b)
    empty = embed_to_file(HashEmbedder(), [], tmp_path / "empty", batch_size=3, produced_by={})
    assert empty.shape == (0, 8)
