"""The multiple-choice judge (groundflow.judge.llm_judge): extraction and its fallback, the regex and
text-match fast paths (the article "A" is not option A), verdict parsing, the persistent cache, and
an unreachable judge recorded as unknown/"error" and not cached. The model is a scripted generator."""

import json

import pytest

from groundflow.generate.openai_compat import GenerationRequestError
from groundflow.judge.llm_judge import (
    JudgeItem,
    MultipleChoiceJudge,
    Verdict,
    extract_answer,
    fast_verdict,
    letter_of,
    load_judge_prompts,
    option_index,
    parse_verdict,
)

CHOICES = ("a red car", "a blue bus", "a green tram")
OPTIONS = "A. a red car\nB. a blue bus\nC. a green tram"


def item(response: str, qid: str = "q1", label: int = 2) -> JudgeItem:
    return JudgeItem(question_id=qid, question="What is parked outside?", choices=CHOICES, options=OPTIONS,
                     answer_label=label, response=response)


class ScriptedJudge:
    """Answers each prompt by a rule over its text; can fail the first k generate calls."""

    features = frozenset()

    def __init__(self, reply=lambda text: "True", fail_calls: int = 0, fail_always: bool = False):
        self.reply, self.fail_calls, self.fail_always = reply, fail_calls, fail_always
        self.calls: list[list[str]] = []

    def generate(self, prompts, params):
        assert params.do_sample is False and params.n == 1
        self.calls.append([p.messages[-1]["content"] for p in prompts])
        if self.fail_always or len(self.calls) <= self.fail_calls:
            raise GenerationRequestError("prompt 0: gave up after 3 attempts to http://judge; last error: 503")
        return [[self.reply(p.messages[-1]["content"])] for p in prompts]

    def describe(self):
        return {"backend": "scripted"}


@pytest.mark.parametrize("response, expected", [
    ("Step 1: look. Final Answer: B\nsomething else", "B"),
    ("Step 1: look. final answer: a blue bus. Done", "a blue bus. Done"),
    ("FINAL ANSWER:C", "C"),
    ("It looks blue. So it is the blue bus; ok", "So it is the blue bus;"),  # last sentence of >= 10 chars
    ("Hmm. Yes. No.", None),  # no sentence long enough, no phrase
    ("Final Answer:   \n", None),
])
def test_extraction_and_fallback(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("b", "B"), ("B)", "B"),
    ("B. a blue bus", "B"), ("(C) a green tram", "C"),
    ("A red car is parked", None),  # the article
    ("A car", None),
    ("B. a red car", None),  # letter and text disagree: for the judge
    ("D", None),  # no option D
])
def test_letter_of(answer, letter):
    assert letter_of(answer, CHOICES) == letter


def test_fast_paths():
    assert fast_verdict(item("Final Answer: B"), "B") == Verdict("B", "true", "regex")
    assert fast_verdict(item("Final Answer: (A)"), "(A)") == Verdict("(A)", "false", "regex")
    assert fast_verdict(item("x"), "A Blue Bus.") == Verdict("A Blue Bus.", "true", "match")
    assert fast_verdict(item("x"), "a red car") == Verdict("a red car", "false", "match")
    assert fast_verdict(item("x"), None) == Verdict(None, "false", "regex")
    assert fast_verdict(item("x"), "A red car is parked outside") is None  # article: goes to the judge
    assert option_index("a green tram", CHOICES) == 2 and option_index("the tram", CHOICES) is None


@pytest.mark.parametrize("reply, verdict", [
    ("True", "true"), ("**FALSE**. The response picks A.", "false"), ("unknown", "unknown"),
    ("It is true that", "true"), ("untrue; falsey", "unknown"), ("I cannot say", "unknown"), ("", "unknown"),
    ("False, not true", "false"),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_judge_prompt_shows_options_and_the_correct_letter_and_text():
    judge = ScriptedJudge()
    MultipleChoiceJudge(judge).judge([item("Final Answer: the bus that is blue")])
    (prompt,), = judge.calls
    assert OPTIONS in prompt and "B. a blue bus" in prompt and "the bus that is blue" in prompt
    system = load_judge_prompts().system.text
    assert all(word in system for word in ("True", "False", "Unknown"))


def test_one_batched_call_and_cache_hits_ask_nothing(tmp_path):
    cache = tmp_path / "judge" / "cache.jsonl"
    model = ScriptedJudge(reply=lambda text: "True" if "blue one" in text else "False")
    items = [item("Final Answer: the blue one"), item("Final Answer: the blue one"),  # same key: asked once
             item("Final Answer: the red one"), item("Final Answer: B"), item("Final Answer: the blue one", qid="q2")]
    verdicts = MultipleChoiceJudge(model, cache=cache).judge(items)
    assert [v.verdict for v in verdicts] == ["true", "true", "false", "true", "true"]
    assert [v.judged_by for v in verdicts] == ["judge", "judge", "judge", "regex", "judge"]
    assert len(model.calls) == 1 and len(model.calls[0]) == 3
    assert len(cache.read_text().splitlines()) == 3

    again = ScriptedJudge(reply=lambda text: pytest.fail("a cached verdict was asked again"))
    second = MultipleChoiceJudge(again, cache=cache).judge(items)
    assert [v.verdict for v in second] == ["true", "true", "false", "true", "true"]
    assert [v.judged_by for v in second] == ["cache", "cache", "cache", "regex", "cache"]
    assert again.calls == []


def test_cache_is_per_judge_and_survives_a_torn_line(tmp_path):
    cache = tmp_path / "cache.jsonl"
    MultipleChoiceJudge(ScriptedJudge(), cache=cache).judge([item("Final Answer: the blue one")])
    with cache.open("a") as f:
        f.write('{"judge": "x", "id": "q1", "ans')  # a killed job's half line
    other = ScriptedJudge(reply=lambda text: "False")
    # another judge model: its own verdicts, not the first model's
    other.describe = lambda: {"backend": "scripted", "model": "other"}
    verdict, = MultipleChoiceJudge(other, cache=cache).judge([item("Final Answer: the blue one")])
    assert verdict == Verdict("the blue one", "false", "judge") and len(other.calls) == 1


def test_unreachable_judge_is_unknown_error_and_not_cached(tmp_path):
    cache = tmp_path / "cache.jsonl"
    down = ScriptedJudge(fail_always=True)
    verdicts = MultipleChoiceJudge(down, cache=cache, max_consecutive_failures=2).judge(
        [item("Final Answer: the blue one"), item("Final Answer: the red one"), item("Final Answer: the tram"),
         item("Final Answer: C")])
    assert [(v.verdict, v.judged_by) for v in verdicts] == [("unknown", "error")] * 3 + [("false", "regex")]
    assert not any(v.correct for v in verdicts)
    assert len(down.calls) == 1 + 2  # the batch, then one at a time until two failures in a row
    assert not cache.exists() or cache.read_text() == ""
    # a later run with the judge back asks again
    back = ScriptedJudge()
    later = MultipleChoiceJudge(back, cache=cache).judge([item("Final Answer: the blue one")])
    assert later[0] == Verdict("the blue one", "true", "judge") and len(back.calls) == 1


def test_a_failed_batch_costs_only_the_failing_prompt():
    model = ScriptedJudge(fail_calls=2)  # the batch and the first single prompt fail
    verdicts = MultipleChoiceJudge(model).judge([item("Final Answer: the blue one"), item("Final Answer: the red one")])
    assert [(v.verdict, v.judged_by) for v in verdicts] == [("unknown", "error"), ("true", "judge")]


def test_bad_label_names_the_question_and_a_missing_judge_is_loud():
    with pytest.raises(ValueError, match="q9.*answer_label 4"):
        item("x", qid="q9", label=4)
    with pytest.raises(ValueError, match="no judge generator"):
        MultipleChoiceJudge(None).judge([item("Final Answer: the blue one")])
    assert MultipleChoiceJudge(None).judge([item("Final Answer: B")])[0].correct


def test_cache_lines_are_json_with_the_judge_fingerprint(tmp_path):
    cache = tmp_path / "cache.jsonl"
    judge = MultipleChoiceJudge(ScriptedJudge(), cache=cache)
    judge.judge([item("Final Answer: the blue one")])
    entry = json.loads(cache.read_text())
    assert entry == {"judge": judge.fingerprint, "id": "q1", "answer": "the blue one", "verdict": "true"}
