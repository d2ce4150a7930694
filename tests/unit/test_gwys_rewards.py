"""GWYS rewards: the spec's parity cases (§11.4) under the original rules, the fixes, format by full
match, and the caption reward's judge requests, reply scoring and counted failures."""

import pytest

from groundflow.generate.backends import SamplingParams
from groundflow.gwys.rewards import (AccuracyReward, CaptionReward, FormatReward, answer_score, caption_of,
                                     caption_scores, completion_text, extract_answer, mean_relative_accuracy,
                                     weighted_total, word_error_rate)


def as_chat(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("pred, gt, expected", [
    ("B", "B", 1.0),
    (" b", "B", 0.0),  # case-sensitive
    ("B.", "B", 0.0),
    ("", "B", 0.0),
])
def test_multiple_choice_parity(pred, gt, expected):
    assert answer_score(pred, gt, "multiple choice", rules="original") == expected


@pytest.mark.parametrize("pred, gt, expected", [
    ("3", "3.0", 0.0),  # one side has a decimal mark
    ("1,000", "1000", 0.0),  # the comma counts as a decimal mark
    ("1,000", "1000.0", 1.0),
    ("3.14159", "3.14", 1.0),  # rounded to 2 decimals
    ("3.146", "3.14", 0.0),
    ("42", "42", 1.0),
    ("forty", "42", 0.0),
])
def test_numerical_parity(pred, gt, expected):
    assert answer_score(pred, gt, "numerical", rules="original") == expected
    assert answer_score(gt, pred, "numerical", rules="original") == expected


@pytest.mark.parametrize("problem_type", ["OCR", "free-form", "regression", "something else"])
def test_other_types_give_nothing_under_the_original_rules(problem_type):
    assert answer_score("same words", "same words", problem_type, rules="original") == 0.0


@pytest.mark.parametrize("pred, expected", [("b", 1.0), ("(B)", 1.0), ("B.", 1.0), ("B. blue", 1.0),
                                            ("blue", 1.0), ("B. red", 0.0), ("A", 0.0), ("E", 0.0), ("", 0.0)])
def test_multiple_choice_fixed_reads_the_option_however_written(pred, expected):
    options = ["A. red", "B. blue", "C. green", "D. grey"]
    assert answer_score(pred, "B", "multiple choice", rules="fixed", options=options) == expected


def test_multiple_choice_fixed_without_options_reads_letters_only():
    assert answer_score("b", "B", "multiple choice") == 1.0
    assert answer_score("blue", "B", "multiple choice") == 0.0


@pytest.mark.parametrize("pred, gt, expected", [
    ("3", "3.0", 1.0), ("1,000", "1000", 1.0), ("1,000", "1000.0", 1.0), ("3,5", "3.5", 1.0),
    ("3.14159", "3.14", 1.0), ("2", "3", 0.0), ("1,00", "100", 0.0), ("nan", "nan", 0.0), ("", "3", 0.0),
])
def test_numerical_fixed_compares_values(pred, gt, expected):
    assert answer_score(pred, gt, "numerical", rules="fixed") == expected


def test_fixed_scores_for_ocr_free_form_and_regression():
    assert word_error_rate("the red cat", "the red cat") == 0.0
    assert word_error_rate("the cat", "the red cat") == pytest.approx(1 / 3)
    assert answer_score("the cat", "the red cat", "OCR") == pytest.approx(2 / 3)
    assert answer_score("a b c d e f", "x", "OCR") == 0.0  # clipped
    assert answer_score("a red square", "a red square", "free-form") == pytest.approx(1.0)
    assert answer_score("nothing alike", "a red square", "free-form") == 0.0
    # relative error 0.12: below 1 - θ for θ in 0.50 .. 0.85 (8 of 10)
    assert mean_relative_accuracy(11.2, 10.0) == pytest.approx(0.8)
    assert answer_score("11.2", "10", "regression") == pytest.approx(0.8)
    assert mean_relative_accuracy(10.0, 10.0) == 1.0 and mean_relative_accuracy(20.0, 10.0) == 0.0
    assert answer_score("ten", "10", "regression") == 0.0


def test_unknown_rules_are_refused():
    with pytest.raises(ValueError, match="answer rules"):
        AccuracyReward(rules="lenient")


def test_answer_and_caption_extraction():
    text = "<caption> a red cube </caption><answer>\n B \n</answer><answer>C</answer>"
    assert extract_answer(text) == "B" and caption_of(text) == "a red cube"
    assert extract_answer("B") == "" and caption_of("no caption") == ""


def test_completions_as_trl_passes_them():
    assert completion_text("plain") == "plain"
    assert completion_text(as_chat("chat")) == "chat"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "parts"}]}]) == "parts"
    with pytest.raises(TypeError):
        completion_text(42)


def test_accuracy_reward_over_a_batch_of_both_kinds():
    reward = AccuracyReward(rules="original")
    completions = [as_chat("<think>x</think><answer>B</answer>"), "<answer>3.0</answer>", as_chat("B")]
    scores = reward(completions, solution=["<answer>B</answer>", "<answer>3</answer>", "<answer>B</answer>"],
                    problem_type=["multiple choice", "numerical", "multiple choice"], prompts=[None] * 3)
    assert scores == [1.0, 0.0, 0.0]
    assert AccuracyReward(rules="fixed")(completions[1:2], solution=["<answer>3</answer>"],
                                         problem_type=["numerical"]) == [1.0]
    assert reward.__name__ == "accuracy"
    with pytest.raises(ValueError, match="'solution'"):
        reward(completions, problem_type=["numerical"] * 3)


FOUR = "<prethink>plan</prethink>\n<caption>a cube</caption>\n<think>so</think>\n<answer>B</answer>"


@pytest.mark.parametrize("form, text, expected", [
    ("four_tag", FOUR, 1.0),
    ("four_tag", FOUR + " trailing", 0.0),
    ("four_tag", "lead " + FOUR, 0.0),
    ("four_tag", "<caption>a cube</caption><think>so</think><answer>B</answer>", 0.0),
    ("four_tag", "<prethink>p\nq</prethink><caption>c</caption>  <think>t</think><answer>B</answer>", 1.0),
    ("think_answer", "<think>so</think>\n<answer>B</answer>", 1.0),
    ("think_answer", "<think>so</think><answer>B</answer>\n", 0.0),
    ("think_answer", "<answer>B</answer>", 0.0),
    ("think_answer", FOUR, 0.0),
])
def test_format_is_a_full_match(form, text, expected):
    assert FormatReward(form)([text, as_chat(text)]) == [expected, expected]


def test_weighted_total_mixes_as_trl_does():
    assert weighted_total([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], [1.0, 0.1, 1.0]) == pytest.approx([1.1, 1.1])
    with pytest.raises(ValueError):
        weighted_total([[1.0]], [1.0, 0.1])


class FakeJudge:
    """Answers from the caption: "cube" -> B; raises for captions holding "boom" (always, or only in a batch)."""

    def __init__(self, fail_batches=False):
        self.calls = []
        self.fail_batches = fail_batches

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        if self.fail_batches and len(prompts) > 1:
            raise ConnectionError("batch refused")
        out = []
        for prompt in prompts:
            user = prompt.messages[-1]["content"]
            if "boom" in user:
                raise TimeoutError("judge timed out")
            out.append(["<think>..</think><answer>B</answer>" if "cube" in user else "<answer>A</answer>"])
        return out


def caption_completion(caption):
    return as_chat(f"<prethink>p</prethink><caption>{caption}</caption><think>t</think><answer>B</answer>")


def test_caption_request_holds_the_caption_and_question_only():
    reward = CaptionReward(FakeJudge())
    prompt = reward.prompts.request("a red cube", "Which colour?\nOptions:\nA. blue\nB. red", "multiple choice")
    assert prompt.image is None
    system, user = prompt.messages
    assert system["role"] == "system" and user["role"] == "user"
    assert "a red cube" in user["content"] and "B. red" in user["content"] and "<answer>" in user["content"]


def test_caption_scores_from_replies_count_failures():
    replies = ["<think>..</think><answer> B </answer>", None, "<answer>A</answer>", "B, without a tag"]
    answers = [None if r is None else extract_answer(r) for r in replies]
    scores, failed = caption_scores(answers, ["<answer>B</answer>"] * 4, ["multiple choice"] * 4)
    assert scores == [1.0, 0.0, 0.0, 0.0] and failed == 1


def columns(n):
    return dict(format_question=["Which colour?\nOptions:\nA. blue\nB. red"] * n,
                solution=["<answer>B</answer>"] * n, problem_type=["multiple choice"] * n,
                options=[["A. blue", "B. red"]] * n)


def test_caption_reward_asks_once_per_distinct_request_and_caches():
    judge = FakeJudge()
    reward = CaptionReward(judge, params=SamplingParams(max_new_tokens=16))
    group = [caption_completion("a red cube"), caption_completion("a blue ball"), caption_completion("a red cube"),
             as_chat("<answer>B</answer>")]
    assert reward(group, **columns(4)) == [1.0, 0.0, 1.0, 0.0]
    assert judge.calls == [2]  # two distinct captions in one batch; the caption-less one not asked
    assert reward(group[:2], **columns(2)) == [1.0, 0.0]
    assert judge.calls == [2]  # cached
    assert reward.failures == 0 and reward.requests == 2
    small = CaptionReward(FakeJudge(), cache_size=1)
    small(group, **columns(4))
    assert list(small.answers) == [("a blue ball", columns(1)["format_question"][0], "multiple choice")]


def test_empty_captions_can_be_asked_as_the_original_did():
    judge = FakeJudge()
    reward = CaptionReward(judge, judge_empty_captions=True)
    assert reward([as_chat("<answer>B</answer>")], **columns(1)) == [0.0]
    assert judge.calls == [1]


def test_a_failing_judge_gives_zero_and_is_counted(caplog):
    judge = FakeJudge(fail_batches=True)
    reward = CaptionReward(judge)
    group = [caption_completion("a red cube"), caption_completion("boom"), caption_completion("boom"),
             caption_completion("a cube again")]
    assert reward(group, **columns(4)) == [1.0, 0.0, 0.0, 1.0]
    assert judge.calls == [3, 1, 1, 1]  # the batch, then each request alone
    assert reward.last_failures == 2 and reward.failures == 2
    assert "caption judge failed for 2 of 4" in caplog.text
    # failures are not cached: the next call asks again, and counts again
    assert reward(group[1:2], **columns(1)) == [0.0]
    assert reward.failures == 3 and judge.calls[-1] == 1
