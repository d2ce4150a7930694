"""CVC trial stages T1-T3 on fake generators and embedders: prompts, parsing, shapes, accounting."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from groundflow.cvc.prompts import REASONING_SUFFIX
from groundflow.cvc.trials import (
    check_answers,
    extract_answers,
    extraction_prompt,
    instruction_text,
    load_extraction_prompt,
    parse_confined_answer,
    parse_short_answer,
    rationale_answer_choices,
    reasoning_question,
    sample_trials,
    trial_prompt,
)
from groundflow.generate.backends import ChatPrompt, SamplingParams
from groundflow.io import atomic_path, check_accounting

# The stored instruction: the header, a newline, the question (the released data's layout).
QUESTION = (
    "In the given image, there is an object heavily occluded by a cluster of gray blocks. "
    "Please answer the following question.\nWhat might the object occluded by the gray blocks be?"
)


class FakeGenerator:
    """Answers each prompt with `answer(prompt, k)` for k in range(n); records every call."""

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[tuple[list[ChatPrompt], SamplingParams]] = []

    def generate(self, prompts, params):
        prompts = list(prompts)
        self.calls.append((prompts, params))
        return [[self.answer(p, k) for k in range(params.n)] for p in prompts]

    def describe(self):
        return {"backend": "fake"}


class FakeEmbedder:
    """Hand-made unit vectors per text; unknown texts map to the last axis."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def encode(self, texts):
        texts = list(texts)
        self.calls.append(texts)
        rows = np.array([self.vectors.get(t, [0.0, 0.0, 0.0, 1.0]) for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def describe(self):
        return {"backend": "fake"}


# --- prompts -------------------------------------------------------------------------------------


def test_trial_prompt_appends_the_reasoning_suffix_once():
    image = Image.new("RGB", (8, 8))
    prompt = trial_prompt(QUESTION, image)
    expected = QUESTION + " Please provide your reasoning process and confirm a unique answer. Let's think step by step."
    assert prompt.messages == [{"role": "user", "content": expected}]
    assert prompt.image is image and prompt.assistant_prefix == ""
    assert expected.count(REASONING_SUFFIX) == 1
    # the seed's stored queries already ended with the suffix: not appended a second time
    assert reasoning_question(f"{QUESTION} {REASONING_SUFFIX}") == expected
    assert reasoning_question(f"  {QUESTION}\n") == expected


def test_reasoning_question_keeps_the_header_on_its_own_line():
    """The released human turn: header, newline, question, one space, one suffix (the old code
    joined header and question with a space)."""
    header = "In the given image, there are animals heavily occluded by a cluster of gray blocks. Please answer the following question."
    question = "What might the animals occluded by the gray blocks be?"
    expected = f"{header}\n{question} {REASONING_SUFFIX}"
    assert reasoning_question(f"{header}\n{question}") == expected
    assert reasoning_question(f"  {header}  \n\n  {question}   {REASONING_SUFFIX}\n") == expected
    assert reasoning_question(f"{header}\n{question} Please confirm a unique answer.") == expected
    assert instruction_text(f"{header}\n{question} {REASONING_SUFFIX} {REASONING_SUFFIX}") == f"{header}\n{question}"


@pytest.mark.parametrize("mode, examples", [("free", 6), ("rationale_confined", 4)])
def test_extraction_prompt_is_compact_and_carries_the_rationale_on_one_line(mode, examples):
    text = load_extraction_prompt(mode)
    prompt = extraction_prompt("The man holds a leash.\n\nSo it is   a dog.", text)
    assert prompt.assistant_prefix == "Answer:" and prompt.image is None
    [message] = prompt.messages
    assert message["role"] == "user"
    assert message["content"].endswith("Reasoning: The man holds a leash. So it is a dog.")
    assert message["content"].count("Answer: ") == examples
    assert len(message["content"]) < 2500  # the seed's was ~3.6k tokens
    assert text.version.startswith({"free": "extraction_free-", "rationale_confined": "extraction_confined-"}[mode])
    braced = extraction_prompt("a {brace} in the text", text).messages[0]["content"]
    assert "{" not in braced.replace("{brace}", "")


def test_free_extraction_prompt_shows_unknown_and_a_hedged_answer():
    content = extraction_prompt("x", load_extraction_prompt("free")).messages[0]["content"]
    assert "\nAnswer: unknown\n" in content
    hedged = [line for line in content.splitlines() if line.startswith("Answer: ") and ", " in line]
    assert hedged, "no example keeps several answers as one comma-separated list"


def test_extraction_prompt_file_from_config(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("Extract it: {rationale}\n")
    text = load_extraction_prompt("free", mine)
    assert extraction_prompt("a  dog", text).messages[0]["content"] == "Extract it: a dog"
    assert text.source == str(mine) and text.version.startswith("mine-")
    (tmp_path / "bad.txt").write_text("Extract it: {reasoning}")
    with pytest.raises(ValueError, match="lacks the field"):
        load_extraction_prompt("free", tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="unknown mode"):
        load_extraction_prompt("confined")


@pytest.mark.parametrize(
    "text, answer",
    [
        (" cell phone", "cell phone"),
        ("Answer: A dog.", "dog"),
        ("answer - the Fire Hydrant!", "fire hydrant"),
        ("The answer is: an umbrella", "umbrella"),
        ("Final answer: cars\nBecause they are parked.", "cars"),
        ("\n\n  **Cup**  \n", "cup"),
        # hedged: every option kept, as one comma-separated list (the old parser cut to "cup")
        ("a cup, a mug", "cup, mug"),
        ("A cup or a mug.", "cup, mug"),
        ("cup or mug", "cup, mug"),
        ("knife / fork", "knife, fork"),
        ("It could be a cup, a mug or a glass", "cup, mug, glass"),
        ("cup, cup", "cup"),
        ("cup, none", "cup"),
        ("It is a teddy bear.", "teddy bear"),
        ("\"traffic light\"", "traffic light"),
        ("The", ""),
        # the rationale settles on nothing: "unknown", an answer like any other (the old parser gave "")
        ("none", "unknown"),
        ("Unknown.", "unknown"),
        ("N/A", "unknown"),
        ("", ""),
        ("   \n  ", ""),
        ("orange", "orange"),  # a word starting like "or" is not a hedge
        ("another skier", "another skier"),
    ],
)
def test_parse_short_answer(text, answer):
    assert parse_short_answer(text) == answer


@pytest.mark.parametrize("text, answer", [(" kite", "kite"), (" Red Kite", "red kite"), (" none", ""), ("", "")])
def test_parse_confined_answer(text, answer):
    assert parse_confined_answer(text) == answer


# --- T1 trial sampling ---------------------------------------------------------------------------


def _write_jpeg(path, colour):
    with atomic_path(path) as tmp:
        Image.new("RGB", (12, 10), colour).save(tmp, format="JPEG")


def _instances(tmp_path):
    _write_jpeg(tmp_path / "occluded" / "0" / "scene_0000-kite.jpg", (200, 10, 10))
    _write_jpeg(tmp_path / "occluded" / "0" / "scene_0001-car.jpg", (10, 200, 10))
    (tmp_path / "occluded" / "0" / "scene_0002-cup.jpg").write_bytes(b"not a jpeg")
    return pd.DataFrame(
        {
            "id": ["scene_0000-kite", "scene_0001-car", "scene_0002-cup", "scene_0003-tree"],
            "label": ["kite", "car", "cup", "tree"],
            "occluded_image": [f"occluded/0/{s}.jpg" for s in
                               ("scene_0000-kite", "scene_0001-car", "scene_0002-cup", "scene_0003-tree")],
            "instruction": [QUESTION] * 4,
        }
    )


def test_sample_trials_one_call_n_trials_and_unreadable_images_rejected(tmp_path):
    instances = _instances(tmp_path)
    generator = FakeGenerator(lambda p, k: f"{p.image.getpixel((0, 0))[0] > 100} trial {k}")
    params = SamplingParams(max_new_tokens=384, n=3, do_sample=True, temperature=1.0, top_p=0.9)
    result = sample_trials(instances, generator, params, image_dir=tmp_path)

    assert check_accounting("trials", instances["id"], result) == {"stage": "trials", "in": 4, "out": 2, "rejected": 2}
    assert len(generator.calls) == 1
    prompts, used = generator.calls[0]
    assert used is params and len(prompts) == 2
    assert prompts[0].messages[0]["content"] == reasoning_question(QUESTION)
    assert prompts[0].image.mode == "RGB" and prompts[0].image.size == (12, 10)
    assert list(result.kept["id"]) == ["scene_0000-kite", "scene_0001-car"]
    assert [list(t) for t in result.kept["trials"]] == [
        ["True trial 0", "True trial 1", "True trial 2"],
        ["False trial 0", "False trial 1", "False trial 2"],
    ]
    reasons = dict(zip(result.rejects["id"], result.rejects["reason"]))
    assert set(result.rejects["stage"]) == {"trials"}
    assert reasons["scene_0002-cup"].startswith("occluded image of 'scene_0002-cup': unreadable image")
    assert reasons["scene_0003-tree"].startswith("occluded image of 'scene_0003-tree': missing image file")


def test_sample_trials_rejects_a_generator_that_breaks_the_contract(tmp_path):
    instances = _instances(tmp_path).iloc[:2]
    short = FakeGenerator(lambda p, k: "x")
    short.generate = lambda prompts, params: [["only one"] for _ in prompts]
    with pytest.raises(RuntimeError, match="expected 2 strings per prompt"):
        sample_trials(instances, short, SamplingParams(max_new_tokens=8, n=2, do_sample=True), image_dir=tmp_path)


def test_sample_trials_on_an_all_rejected_chunk_makes_no_call(tmp_path):
    instances = _instances(tmp_path).iloc[2:]
    generator = FakeGenerator(lambda p, k: "x")
    result = sample_trials(instances, generator, SamplingParams(max_new_tokens=8, n=2, do_sample=True), image_dir=tmp_path)
    assert generator.calls == [] and result.kept.empty and "trials" in result.kept
    assert check_accounting("trials", instances["id"], result)["rejected"] == 2


# --- T2 answer extraction ------------------------------------------------------------------------


def _rationale_of(prompt: ChatPrompt) -> str:
    return prompt.messages[0]["content"].rsplit("Reasoning: ", 1)[1]


def test_extract_answers_flattens_into_one_call_and_regroups(tmp_path):
    canned = {"It flies on a string. A kite.": " A kite.", "Wheels: a car, or a bus.": " a car, a bus",
              "I cannot tell.": " none", "Clearly a kite": "Answer: Kite"}
    generator = FakeGenerator(lambda p, k: canned[_rationale_of(p)])
    trials_df = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "trials": [
                ["It flies on a string. A kite.", "", "Clearly a kite", "It flies on a string. A kite."],
                ["Wheels: a car, or a bus.", "I cannot tell.", "   ", "Wheels: a car, or a bus."],
                [],
            ],
        }
    )
    params = SamplingParams(max_new_tokens=100)
    result = extract_answers(trials_df, generator, params)

    assert check_accounting("extraction", trials_df["id"], result) == {
        "stage": "extraction", "in": 3, "out": 2, "rejected": 1}
    assert len(generator.calls) == 1
    prompts, used = generator.calls[0]
    assert used is params
    # greedy: each distinct non-empty rationale is asked once
    assert [_rationale_of(p) for p in prompts] == [
        "It flies on a string. A kite.", "Clearly a kite", "Wheels: a car, or a bus.", "I cannot tell."]
    assert all(p.assistant_prefix == "Answer:" for p in prompts)
    # free (the paper): the hedge stays one comma-separated list, "none" is written "unknown"
    assert [list(p) for p in result.kept["predictions"]] == [
        ["kite", "", "kite", "kite"], ["car, bus", "unknown", "", "car, bus"]]
    assert [list(p) for p in result.kept["raw_predictions"]] == [
        [" A kite.", "", "Answer: Kite", " A kite."], [" a car, a bus", " none", "", " a car, a bus"]]
    assert list(result.rejects["reason"]) == ["no trials to extract answers from for 'c'"]
    assert list(result.rejects["stage"]) == ["extraction"]


def test_extract_answers_asks_every_rationale_when_sampling_and_wants_n_1():
    generator = FakeGenerator(lambda p, k: "dog")
    trials_df = pd.DataFrame({"id": ["a"], "trials": [["same", "same"]]})
    result = extract_answers(trials_df, generator, SamplingParams(max_new_tokens=10, do_sample=True))
    assert len(generator.calls[0][0]) == 2 and list(result.kept["predictions"][0]) == ["dog", "dog"]
    with pytest.raises(ValueError, match="params.n=2"):
        extract_answers(trials_df, generator, SamplingParams(max_new_tokens=10, n=2))


def test_rationale_answer_choices_are_the_rationales_own_phrases():
    choices = rationale_answer_choices("The gray blocks probably hide a Red Kite, not a dog. None of it is a car.", 2)
    assert choices[-1] == " none" and choices.count(" none") == 1
    for phrase in ("gray", "gray blocks", "blocks", "red", "red kite", "kite", "dog", "car", "probably hide"):
        assert f" {phrase}" in choices
    # no phrase starting or ending with a function word or a determiner, none across punctuation,
    # none longer than the limit
    for phrase in (" a dog", " the gray", " hide a", " kite, not", " kite not", " gray blocks probably"):
        assert phrase not in choices
    assert rationale_answer_choices(", . !", 3) == [" none"]


def test_extract_answers_confined_to_the_rationale_passes_its_phrases_as_choices():
    generator = FakeGenerator(lambda p, k: p.choices[1] if p.choices[0] != " none" else " none")
    trials_df = pd.DataFrame({"id": ["a"], "trials": [["A string and a kite.", "?", "a Kite and a string"]]})
    result = extract_answers(trials_df, generator, SamplingParams(max_new_tokens=10), mode="rationale_confined",
                             answer_span_words=2)
    prompts = generator.calls[0][0]
    assert [p.choices for p in prompts] == [rationale_answer_choices(_rationale_of(p), 2) for p in prompts]
    assert prompts[0].choices == [" string", " kite", " none"]
    assert list(result.kept["predictions"][0]) == ["kite", "", "string"]
    assert "write \"none\"" in prompts[0].messages[0]["content"]  # the confined mode's own prompt
    assert extraction_prompt("a kite", load_extraction_prompt("free")).choices is None
    with pytest.raises(ValueError, match="answer_span_words must be >= 1"):
        extract_answers(trials_df, generator, SamplingParams(max_new_tokens=10), mode="rationale_confined",
                        answer_span_words=0)
    # free mode (the paper) ignores the span width: no choices
    free = FakeGenerator(lambda p, k: " kite")
    extract_answers(trials_df, free, SamplingParams(max_new_tokens=10), answer_span_words=2)
    assert all(p.choices is None for p in free.calls[0][0])
    assert "unknown" in free.calls[0][0][0].messages[0]["content"]


# --- T3 answer checking --------------------------------------------------------------------------

S = math.sqrt(0.75)
VECTORS = {
    "cup": [1.0, 0.0, 0.0, 0.0],
    "mug": [0.5, S, 0.0, 0.0],       # cosine 0.5 with "cup"
    "cups": [0.96, 0.28, 0.0, 0.0],  # cosine 0.96 with "cup"
    "glass": [0.0, 0.0, 1.0, 0.0],   # cosine 0 with "cup"
    "kite": [0.0, 0.0, 0.0, 1.0],
}


def test_check_answers_exact_similarities_threshold_and_empty_predictions():
    df = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "label": ["cup", "kite", "cup"],
            "predictions": [["cups", "mug", "", "glass", "cup"], ["kite", "kite"], ["", ""]],
        }
    )
    embedder = FakeEmbedder(VECTORS)
    result = check_answers(df, embedder, threshold=0.5)
    assert check_accounting("checking", df["id"], result) == {"stage": "checking", "in": 3, "out": 3, "rejected": 0}
    assert len(embedder.calls) == 1 and "" not in embedder.calls[0]
    sims = [list(s) for s in result.kept["similarities"]]
    assert sims[0][:2] == [pytest.approx(0.96, abs=1e-6), pytest.approx(0.5, abs=1e-6)]
    assert math.isnan(sims[0][2]) and sims[0][3] == pytest.approx(0.0, abs=1e-6) and sims[0][4] == pytest.approx(1.0)
    assert sims[1] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert all(math.isnan(s) for s in sims[2])
    # strictly above the threshold: "mug" at exactly 0.5 is not correct, empty never is
    assert [list(c) for c in result.kept["correct"]] == [[True, False, False, False, True], [True, True], [False, False]]
    assert list(result.kept["n_correct"]) == [2, 2, 0] and result.kept["n_correct"].dtype == "int64"
    assert result.rejects.empty

    lower = check_answers(df, FakeEmbedder(VECTORS), threshold=0.49)
    assert list(lower.kept["n_correct"]) == [3, 2, 0]


def test_check_answers_survives_a_parquet_round_trip(tmp_path):
    from groundflow.io import read_table, write_table

    df = pd.DataFrame({"id": ["a"], "label": ["cup"], "predictions": [["cup", ""]]})
    checked = check_answers(df, FakeEmbedder(VECTORS), threshold=0.85).kept
    write_table(checked, tmp_path / "checked.parquet")
    back = read_table(tmp_path / "checked.parquet")
    assert list(back["correct"][0]) == [True, False] and int(back["n_correct"][0]) == 1
    assert math.isnan(back["similarities"][0][1])
    again = check_answers(back, FakeEmbedder(VECTORS), threshold=0.85).kept  # numpy-array lists read back
    assert list(again["correct"][0]) == [True, False]


def test_check_answers_compares_unknown_and_a_hedged_list_whole_with_the_label():
    """As the seed: the whole extracted string is encoded against the label; "unknown" and a
    comma-separated list are not split nor skipped, so a hedge is correct only when the list as a
    whole is close enough to the label."""
    vectors = dict(VECTORS, **{"cup, mug": [0.9, math.sqrt(0.19), 0.0, 0.0], "unknown": [0.0, 0.0, 0.6, 0.8]})
    df = pd.DataFrame({"id": ["a"], "label": ["cup"], "predictions": [["cup, mug", "unknown", "mug"]]})
    embedder = FakeEmbedder(vectors)
    result = check_answers(df, embedder, threshold=0.85)
    assert sorted(embedder.calls[0]) == sorted(["cup, mug", "unknown", "mug", "cup"])
    sims = list(result.kept["similarities"][0])
    assert sims == [pytest.approx(0.9, abs=1e-6), pytest.approx(0.0, abs=1e-6), pytest.approx(0.5, abs=1e-6)]
    assert list(result.kept["correct"][0]) == [True, False, False]
