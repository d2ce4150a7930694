import math

import pandas as pd
import pytest

from groundflow.cings.scoring import (
    DatasetScoring,
    accuracy,
    aggregate_scores,
    check_labels,
    check_metrics,
    evaluation_table,
    exact_match,
    gold_label,
    label_accuracy,
    normalize_answer,
    predicted_label,
    readable_table,
    rouge_l,
    score_metric,
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


# ---------------------------------------------------------------------------------------------
# label accuracy (FEVER)


@pytest.mark.parametrize(
    "prediction, label",
    [
        ("SUPPORTS", "SUPPORTS"),
        ("Refutes.", "REFUTES"),
        ("Yes, the passage supports it.", "SUPPORTS"),
        ("That is correct", "SUPPORTS"),
        ("No.", "REFUTES"),
        ("The claim is false", "REFUTES"),
        # the longest phrase wins and uses its words: "not true" does not also name SUPPORTS
        ("It is not true.", "REFUTES"),
        ("The evidence does not support the claim", "REFUTES"),
        # words of both labels: ambiguous, names none
        ("Yes, it is false", None),
        # no label word at all; whole words only ("nothing" is not "no", "untrue" is not "true")
        ("I cannot tell", None),
        ("nothing untrue here", None),
        ("", None),
    ],
)
def test_predicted_label_by_words(prediction, label):
    assert predicted_label(prediction) == label


def test_label_accuracy_against_the_gold_label():
    assert label_accuracy("yes", ["SUPPORTS"]) == 1.0
    assert label_accuracy("yes", ["supports"]) == 1.0  # gold labels compare normalised
    assert label_accuracy("no", ["SUPPORTS"]) == 0.0
    assert label_accuracy("yes, but also no", ["REFUTES"]) == 0.0  # ambiguous is wrong
    assert label_accuracy("I am not sure", ["REFUTES"]) == 0.0
    # exact match would give the free-form right answer nothing: the reason for the metric
    assert exact_match("Yes, it does.", ["SUPPORTS"]) == 0.0 and label_accuracy("Yes, it does.", ["SUPPORTS"]) == 1.0
    with pytest.raises(ValueError, match="name no label"):
        label_accuracy("yes", ["NOT ENOUGH INFO"])
    with pytest.raises(ValueError, match="several labels"):
        gold_label(["SUPPORTS", "REFUTES"])


def test_a_dataset_may_bring_its_own_labels():
    labels = {"POSITIVE": ["good", "great", "not bad"], "NEGATIVE": ["bad", "awful"]}
    assert predicted_label("Not bad at all", labels) == "POSITIVE"
    assert predicted_label("awful", labels) == "NEGATIVE"
    assert label_accuracy("it was great", ["positive"], labels) == 1.0
    assert predicted_label("yes", labels) is None  # FEVER's words are not this mapping's


@pytest.mark.parametrize(
    "labels, message",
    [
        ({}, "at least one label"),
        ({"X": []}, "needs a list of words"),
        ({"X": "yes"}, "needs a list of words"),
        ({"X": ["the"]}, "normalises to nothing"),
        ({"A": ["yes"]}, "label 'A' normalises to nothing"),  # the article
        ({"X": ["yes"], "Y": ["Yes!"]}, "names both 'X' and 'Y'"),
        ({"X": ["x"], "x": ["y"]}, "are the same label"),
    ],
)
def test_bad_label_mappings_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        check_labels(labels)


def test_score_metric_and_metric_names():
    assert score_metric("exact_match", "Paris", ["paris"]) == 1.0
    assert score_metric("accuracy", "in Paris", ["paris"]) == 1.0
    assert score_metric("rouge_l", "a b c d", ["a c"]) == pytest.approx(2 / 3)
    assert score_metric("label_accuracy", "true", ["SUPPORTS"]) == 1.0
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        score_metric("f1", "x", ["x"])
    assert check_metrics(["rouge_l"]) == ("rouge_l",)
    for bad in ([], ["rouge_l", "rouge_l"], ["bleu"]):
        with pytest.raises(ValueError, match="must be distinct names"):
            check_metrics(bad)


# ---------------------------------------------------------------------------------------------
# the per-dataset table


def _predictions():
    return pd.DataFrame({
        "dataset": ["qa", "qa", "qa", "fever", "fever", "eli5"],
        "mode": ["context", "context", "no_mask", "context", "context", "context"],
        "setting": ["prefilled_1doc"] * 3 + ["closed_book"] * 2 + ["prefilled_1doc"],
        "id": ["q1|prefilled_1doc", "q2|prefilled_1doc", "q1|prefilled_1doc", "f1|closed_book", "f2|closed_book",
               "e1|prefilled_1doc"],
        "prediction": ["Paris", "no idea", "Paris", "yes it is", "true", "the cat sat on the mat"],
        "answers": [["Paris"], ["Nile"], ["Paris"], ["SUPPORTS"], ["REFUTES"], ["the cat lay on a mat"]],
    })


def _runs():
    return pd.DataFrame({
        "dataset": ["qa", "qa", "qa", "fever", "eli5"],
        "mode": ["context", "no_mask", "no_context", "context", "context"],
        "setting": ["prefilled_1doc", "prefilled_1doc", "prefilled_1doc", "closed_book", "prefilled_1doc"],
        "rejected": [0, 1, 2, 0, 0],
    })


DATASETS = {"qa": DatasetScoring(("exact_match", "accuracy")), "fever": DatasetScoring(("label_accuracy",)),
            "eli5": DatasetScoring(("rouge_l",))}


def test_evaluation_table_is_long_with_each_datasets_own_metrics():
    scored, table = evaluation_table(_predictions(), _runs(), DATASETS)
    assert list(table.columns) == ["dataset", "mode", "setting", "metric", "n", "rejected", "score"]
    rows = [tuple(r) for r in table[["dataset", "mode", "metric", "n", "rejected"]].itertuples(index=False)]
    assert rows == [
        ("qa", "context", "exact_match", 2, 0), ("qa", "context", "accuracy", 2, 0),
        ("qa", "no_mask", "exact_match", 1, 1), ("qa", "no_mask", "accuracy", 1, 1),
        ("qa", "no_context", "exact_match", 0, 2), ("qa", "no_context", "accuracy", 0, 2),
        ("fever", "context", "label_accuracy", 2, 0),
        ("eli5", "context", "rouge_l", 1, 0),
    ]
    scores = table["score"].tolist()
    assert scores[:4] == [0.5, 0.5, 1.0, 1.0]
    assert math.isnan(scores[4]) and math.isnan(scores[5])  # a run that answered nothing
    assert scores[6] == 0.5  # "yes it is" names SUPPORTS (right), "true" names SUPPORTS (gold REFUTES)
    assert scores[7] == pytest.approx(2 / 3)
    # per prediction: the dataset's metrics scored, the others NaN
    assert list(scored["id"]) == list(_predictions()["id"])
    fever = scored[scored["dataset"] == "fever"]
    assert fever["label_accuracy"].tolist() == [1.0, 0.0] and fever["exact_match"].isna().all()
    qa = scored[scored["dataset"] == "qa"]
    assert qa["label_accuracy"].isna().all() and qa["rouge_l"].isna().all()
    assert qa["exact_match"].tolist() == [1.0, 0.0, 1.0]


def test_evaluation_table_refuses_inconsistent_inputs():
    with pytest.raises(ValueError, match="not in the runs table"):
        evaluation_table(_predictions(), _runs().iloc[1:], DATASETS)
    with pytest.raises(ValueError, match="twice"):
        evaluation_table(_predictions(), pd.concat([_runs(), _runs()]), DATASETS)
    with pytest.raises(ValueError, match=r"no scoring given for datasets \['eli5'\]"):
        evaluation_table(_predictions(), _runs(), {k: v for k, v in DATASETS.items() if k != "eli5"})
    with pytest.raises(ValueError, match="name no label"):
        bad = _predictions().assign(answers=[["Paris"], ["Nile"], ["Paris"], ["MAYBE"], ["REFUTES"], ["x"]])
        evaluation_table(bad, _runs(), DATASETS)


def test_readable_table_has_the_modes_as_columns():
    _, table = evaluation_table(_predictions(), _runs(), DATASETS)
    pivot = readable_table(table)
    assert list(pivot.columns) == ["dataset", "setting", "metric", "context", "no_mask", "no_context",
                                   "n_context", "n_no_mask", "n_no_context"]
    assert list(zip(pivot["dataset"], pivot["metric"])) == [
        ("qa", "exact_match"), ("qa", "accuracy"), ("fever", "label_accuracy"), ("eli5", "rouge_l")]
    first = pivot.iloc[0]
    assert (first["context"], first["no_mask"], first["n_context"], first["n_no_mask"], first["n_no_context"]) == (
        0.5, 1.0, 2, 1, 0)
    assert math.isnan(first["no_context"])
    assert math.isnan(pivot.iloc[2]["no_mask"])  # fever ran in one mode only
