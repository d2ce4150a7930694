"""GWYS evaluation scoring on known outputs (no model): predictions read as the original's evaluation
reads them, scores by problem type, rates per set, and the table of many models."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from groundflow.generate.backends import SamplingParams
from groundflow.gwys.evaluate import (EvalSettings, answer_units, eval_table, eval_units, prediction_of,
                                      score_output, score_predictions, table_markdown)
from groundflow.gwys.prompts import load_question_prompts

FOUR = EvalSettings(form="four_tag")
THINK = EvalSettings(form="think_answer")


def row(problem_type, answer, options=()):
    return pd.Series({"problem_type": problem_type, "answer": answer, "options": np.array(options, dtype=object)})


MC = row("multiple choice", "B", ["A. yes", "B. no"])
COUNT = row("numerical", "3")


@pytest.mark.parametrize("output, problem_type, expected", [
    ("<prethink>p</prethink>\n<caption>c</caption>\n<think>t</think>\n<answer>B</answer>", "mc", (1.0, True, True)),
    ("<prethink>p</prethink><caption>c</caption><think>t</think><answer> b </answer>", "mc", (1.0, True, True)),
    ("<answer>A</answer>", "mc", (0.0, False, True)),
    ("B", "mc", (1.0, False, False)),  # no tag: the whole output is the prediction, as the original evaluates
    ("no", "mc", (1.0, False, False)),  # the option's text names it
    ("\n\n\n", "mc", (0.0, False, False)),
    ("<think>count</think><answer>3.0</answer>", "num", (1.0, False, True)),  # four_tag form expected
    ("<answer>three</answer>", "num", (0.0, False, True)),
    ("There are 3.", "num", (0.0, False, False)),
])
def test_score_output(output, problem_type, expected):
    scored = score_output(output, MC if problem_type == "mc" else COUNT, FOUR)
    assert (scored["score"], scored["formatted"], scored["answered"]) == expected
    assert scored["correct"] == (expected[0] == 1.0)
    assert scored["solution"] == ("B" if problem_type == "mc" else "3")


def test_forms_and_rules():
    think = "<think>the square is blue</think> <answer>B</answer>"
    assert score_output(think, MC, THINK)["formatted"] and not score_output(think, MC, FOUR)["formatted"]
    original = EvalSettings(form="think_answer", rules="original")
    assert score_output("<answer>b</answer>", MC, original)["score"] == 0.0  # case-sensitive, as the original
    assert score_output("<answer>3.0</answer>", COUNT, original)["score"] == 0.0  # "3" vs "3.0"
    assert prediction_of("x <answer> 7 </answer> y <answer>8</answer>") == "7"
    assert prediction_of("  plain  ") == "plain"
    assert FOUR.sampling() == SamplingParams(max_new_tokens=4096)  # greedy, one answer, nothing else
    with pytest.raises(ValueError, match="output form"):
        EvalSettings(form="cot")


def test_units_scores_and_rejected_counts():
    pool = pd.DataFrame({"id": ["1", "2"], "problem_type": ["numerical", "multiple choice"]})
    units = eval_units({"pope": pool, "shapes": pool.iloc[:1]})
    assert units["id"].tolist() == ["pope|1", "pope|2", "shapes|1"]
    assert units["sample"].tolist() == ["1", "2", "1"] and units["set"].tolist() == ["pope", "pope", "shapes"]
    with pytest.raises(ValueError, match="may not hold"):
        eval_units({"a|b": pool})
    predictions = pd.DataFrame({
        "id": ["pope|1", "pope|2", "shapes|1"], "set": ["pope", "pope", "shapes"],
        "problem_type": ["numerical", "multiple choice", "numerical"], "source": ["count", "pope", None],
        "score": [1.0, 0.0, 1.0], "formatted": [True, False, False], "answered": [True, True, False]})
    rejects = pd.DataFrame({"stage": ["gwys_eval"], "id": ["shapes|9"], "reason": ["unreadable"]})
    scores = score_predictions(predictions, ["pope", "shapes", "empty"], rejects)
    assert scores["pope"]["accuracy"] == 0.5 and scores["pope"]["n"] == 2 and scores["pope"]["format_rate"] == 0.5
    assert scores["pope"]["by_type"]["numerical"]["accuracy"] == 1.0
    assert scores["pope"]["by_source"]["pope"]["accuracy"] == 0.0
    assert scores["shapes"]["rejected"] == 1 and scores["shapes"]["answered_rate"] == 0.0
    assert scores["empty"]["n"] == 0 and scores["empty"]["accuracy"] is None


class ScriptedGenerator:
    """Answers each prompt with the next scripted text; records what it was asked."""

    features = frozenset()

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def generate(self, prompts, params):
        self.calls.append((len(prompts), params))
        return [[self.answers.pop(0)] * params.n for _ in prompts]


def test_answer_units_asks_in_the_models_form_and_rejects_unreadable_images(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    pool = pd.DataFrame({
        "id": ["1", "2", "3", "4"], "problem": ["q"] * 4, "format_question": ["Is it?\nOptions:\nA. yes\nB. no"] * 4,
        "problem_type": ["multiple choice"] * 4, "options": [["A. yes", "B. no"]] * 4, "answer": ["A", "B", "A", "A"],
        "data_type": ["image", "image", "image", "video"], "media": ["a.png", "a.png", "broken.png", "a.mp4"],
        "source": ["pope"] * 4})
    units = eval_units({"pope": pool})
    generator = ScriptedGenerator(["<think>t</think><answer>A</answer>", "<answer>A</answer>"])
    result = answer_units(units, generator, load_question_prompts("think_answer"), THINK, {"pope": tmp_path})
    assert generator.calls == [(2, THINK.sampling())]  # one call for the chunk, greedy
    assert result.kept["id"].tolist() == ["pope|1", "pope|2"] and result.kept["correct"].tolist() == [True, False]
    assert result.kept["formatted"].tolist() == [True, False]
    reasons = dict(zip(result.rejects["id"], result.rejects["reason"]))
    assert "unreadable image" in reasons["pope|3"] and "a video row" in reasons["pope|4"]
    with pytest.raises(ValueError, match="four_tag form"):
        answer_units(units, generator, load_question_prompts("four_tag"), THINK, {"pope": tmp_path})


def test_eval_table_rows_in_model_order_and_markdown():
    scores = {
        "base": {"sets": {"pope": {"accuracy": 0.5}, "shapes": {"accuracy": 0.25}}},
        "sft": {"sets": {"pope": {"accuracy": 0.625}}},
        "ours": {"sets": {"shapes": {"accuracy": 1.0}, "pope": {"accuracy": 0.75}}},
    }
    table = eval_table(scores)
    assert table.index.tolist() == ["base", "sft", "ours"] and table.columns.tolist() == ["pope", "shapes"]
    assert table.loc["ours", "shapes"] == 1.0 and np.isnan(table.loc["sft", "shapes"])
    assert table_markdown(table).splitlines() == [
        "| model | pope | shapes |", "|---|---:|---:|", "| base | 50.0 | 25.0 |", "| sft | 62.5 | – |",
        "| ours | 75.0 | 100.0 |"]
    assert eval_table(scores, sets=["shapes", "pope"]).columns.tolist() == ["shapes", "pope"]
    with pytest.raises(ValueError, match="outside the table"):
        eval_table(scores, sets=["pope"])
    with pytest.raises(ValueError, match="no metric 'f1'"):
        eval_table(scores, metric="f1")
