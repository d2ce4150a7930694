import math

import pandas as pd
import pytest

from groundflow.cings.scoring import (
    accuracy,
    aggregate_scores,
    exact_match,
    normalize_answer,
    rouge_l,
    score_prediction,
    score_predictions,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple,  a pear  ", "apple pear"),
        ("Theatre", "theatre"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("rock-and-roll's", "rockandrolls"),
        ("A", ""),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_any_gold():
    assert exact_match("The Paris.", ["London", "paris"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("", ["the"]) == 1.0  # both normalise to nothing, as in SQuAD


def test_accuracy_is_gold_substring_of_prediction():
    assert accuracy("It is Paris, of course.", ["paris"]) == 1.0
    assert accuracy("Paris", ["Paris, France"]) == 0.0
    assert accuracy("Berlin", ["London", "Rome"]) == 0.0
    # a character substring, as in the papers
    assert accuracy("a comparison", ["Paris"]) == 1.0
    # an empty gold matches nothing rather than everything
    assert accuracy("anything", ["The", "?"]) == 0.0


def test_scores_reject_missing_or_string_golds():
    with pytest.raises(ValueError, match="no gold"):
        exact_match("x", [])
    with pytest.raises(TypeError, match="list of strings"):
        accuracy("x", "x")


def test_rouge_l_exact_values():
    # LCS(the cat sat on the mat, the cat lay on a mat) = the cat on mat: P = R = 4/6
    assert rouge_l("the cat sat on the mat", ["the cat lay on a mat"]) == pytest.approx(2 / 3)
    # LCS = 2, P = 2/4, R = 2/2: F = 2PR/(P+R) = 2/3
    assert rouge_l("a b c d", ["a c"]) == pytest.approx(2 / 3)
    # best over golds; tokenisation lowercases and drops punctuation
    assert rouge_l("Paris!", ["London", "paris"]) == 1.0
    assert rouge_l("", ["paris"]) == 0.0
    # stemming is an option: "running" vs "runs" only agree through the Porter stemmer
    assert rouge_l("dogs running", ["dog runs"]) == 0.0
    assert rouge_l("dogs running", ["dog runs"], use_stemmer=True) == 1.0


def test_score_prediction_all_three():
    assert score_prediction("the Nile river", ["Nile"]) == {
        "exact_match": 0.0,
        "accuracy": 1.0,
        "rouge_l": pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1)),
    }


def test_score_and_aggregate_per_setting():
    predictions = pd.DataFrame(
        {
            "id": ["q1", "q2", "q1", "q2", "q3"],
            "mode": ["context", "context", "no_context", "no_context", "no_context"],
            "setting": ["closed_book"] * 5,
            "prediction": ["Paris", "blue whale", "Rome", "the blue whale is big", "x"],
            "answers": [["Paris"], ["blue whale"], ["Paris"], ["Blue Whale"], ["y"]],
        }
    )
    scored = score_predictions(predictions)
    assert list(scored["exact_match"]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert list(scored["accuracy"]) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert list(scored["id"]) == ["q1", "q2", "q1", "q2", "q3"]
    table = aggregate_scores(scored, ["mode", "setting"])
    assert list(table.columns) == ["mode", "setting", "n", "exact_match", "accuracy", "rouge_l"]
    assert list(table["mode"]) == ["context", "no_context"]
    assert list(table["n"]) == [2, 3]
    assert list(table["exact_match"]) == [1.0, 0.0]
    assert table["accuracy"].tolist() == pytest.approx([1.0, 1 / 3])
    # no_context ROUGE-L: 0 (Rome), 2*(2/5)*1/(2/5+1) = 4/7 (blue whale in 5 tokens), 0 (x)
    assert table["rouge_l"].tolist() == pytest.approx([1.0, (4 / 7) / 3])
    assert math.isclose(table["n"].sum(), len(predictions))


def test_aggregate_empty_and_missing_columns():
    empty = score_predictions(pd.DataFrame({"mode": [], "prediction": [], "answers": []}))
    assert list(aggregate_scores(empty, ["mode"]).columns) == ["mode", "n", "exact_match", "accuracy", "rouge_l"]
    with pytest.raises(ValueError, match="lacks columns"):
        score_predictions(pd.DataFrame({"prediction": ["x"]}))


def test_evaluation_table_rows_for_every_run():
    from groundflow.cings.scoring import evaluation_table

    predictions = pd.DataFrame({
        "dataset": ["demo"] * 3,
        "mode": ["context", "context", "no_mask"],
        "setting": ["prefilled_1doc"] * 3,
        "id": ["q1", "q2", "q1"],
        "prediction": ["Paris", "no idea", "Paris"],
        "answers": [["Paris"], ["Nile"], ["Paris"]],
    })
    rejected = pd.DataFrame({
        "dataset": ["demo"] * 3,
        "mode": ["no_mask", "context", "no_context"],
        "setting": ["prefilled_1doc"] * 3,
        "rejected": [1, 0, 2],
    })
    scored, table = evaluation_table(predictions, rejected)
    assert len(scored) == 3 and list(scored["exact_match"]) == [1.0, 0.0, 1.0]
    assert list(table.columns) == ["dataset", "mode", "setting", "n", "rejected", "exact_match", "accuracy", "rouge_l"]
    assert list(table["mode"]) == ["no_mask", "context", "no_context"]
    assert list(table["n"]) == [1, 2, 0] and list(table["rejected"]) == [1, 0, 2]
    assert table["exact_match"].tolist()[:2] == [1.0, 0.5] and math.isnan(table["exact_match"].iloc[2])
    with pytest.raises(ValueError, match="not in the rejected-counts table"):
        evaluation_table(predictions, rejected.iloc[1:])
    with pytest.raises(ValueError, match="twice"):
        evaluation_table(predictions, pd.concat([rejected, rejected]))
