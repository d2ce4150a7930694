"""Scores for CINGS' evaluation: exact match, accuracy and ROUGE-L against a list of gold answers.

Pure functions, no model. The definitions follow the papers CINGS compares with:
- `normalize_answer` is the SQuAD / KILT normalisation: lowercase, drop punctuation, drop the
  articles a/an/the, collapse whitespace.
- exact match (EM): the normalised prediction equals some normalised gold answer.
- accuracy ("acc" of Self-RAG / ALCE-style QA evaluation): some normalised gold answer occurs in
  the normalised prediction as a substring. It is a character substring, as in those papers, so a
  gold "paris" also matches inside "comparison"; compare settings with it, do not read it alone.
- ROUGE-L (long-form answers: ELI5, WoW): the F-measure of Google's `rouge-score` package, best
  over the gold answers, as KILT scores them. It tokenises on its own (lowercase alphanumerics)
  and is computed on the raw texts, not on `normalize_answer`'s output.
Every score is in [0, 1]; a table multiplies by nothing.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache
from typing import Iterable, Sequence

import pandas as pd

SCORE_COLUMNS = ["exact_match", "accuracy", "rouge_l"]

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower, remove punctuation, remove articles, fix whitespace (in that order)."""
    lowered = text.lower()
    no_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    no_articles = _ARTICLES.sub(" ", no_punctuation)
    return " ".join(no_articles.split())


def _golds(answers: Sequence[str]) -> list[str]:
    if isinstance(answers, str):
        raise TypeError(f"answers must be a list of strings, not the string {answers!r}")
    golds = list(answers)
    if not golds:
        raise ValueError("no gold answers to score against")
    return golds


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in _golds(answers)))


def accuracy(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when any normalised gold answer is a substring of the normalised prediction, else 0.0.

    A gold answer that normalises to nothing ("The", "?") would be a substring of every
    prediction; it counts for no prediction instead (records whose golds are all like that are
    rejected when the evaluation file is read).
    """
    predicted = normalize_answer(prediction)
    return float(any(gold and gold in predicted for gold in map(normalize_answer, _golds(answers))))


@lru_cache(maxsize=4)
def _rouge_scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, answers: Sequence[str], *, use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure of the prediction against the best-matching gold answer."""
    scorer = _rouge_scorer(use_stemmer)
    return max(scorer.score(gold, prediction)["rougeL"].fmeasure for gold in _golds(answers))


def score_prediction(prediction: str, answers: Sequence[str], *, use_stemmer: bool = False) -> dict[str, float]:
    """All three scores of one prediction."""
    return {
        "exact_match": exact_match(prediction, answers),
        "accuracy": accuracy(prediction, answers),
        "rouge_l": rouge_l(prediction, answers, use_stemmer=use_stemmer),
    }


def score_predictions(predictions: pd.DataFrame, *, use_stemmer: bool = False) -> pd.DataFrame:
    """The prediction table with one column per score added.

    `predictions` needs `prediction` (str) and `answers` (list of str) columns; other columns
    (id, mode, setting, dataset, ...) are carried through unchanged.
    """
    missing = [c for c in ("prediction", "answers") if c not in predictions.columns]
    if missing:
        raise ValueError(f"prediction table lacks columns {missing}")
    scored = predictions.copy()
    rows = [
        score_prediction(str(prediction), list(answers), use_stemmer=use_stemmer)
        for prediction, answers in zip(predictions["prediction"], predictions["answers"])
    ]
    for column in SCORE_COLUMNS:
        scored[column] = [row[column] for row in rows]
    return scored


def aggregate_scores(scored: pd.DataFrame, by: Iterable[str]) -> pd.DataFrame:
    """Mean of every score and the number of predictions `n`, per group of `by`, groups in first-seen order."""
    keys = list(by)
    missing = [c for c in keys + SCORE_COLUMNS if c not in scored.columns]
    if missing:
        raise ValueError(f"scored table lacks columns {missing}")
    if scored.empty:
        return pd.DataFrame(columns=keys + ["n"] + SCORE_COLUMNS)
    grouped = scored.groupby(keys, sort=False, as_index=False)
    table = grouped[SCORE_COLUMNS].mean()
    counts = grouped.size().rename(columns={"size": "n"})
    return counts.merge(table, on=keys)[keys + ["n"] + SCORE_COLUMNS]


TABLE_KEYS = ["dataset", "mode", "setting"]
TABLE_COLUMNS = TABLE_KEYS + ["n", "rejected"] + SCORE_COLUMNS


def evaluation_table(predictions: pd.DataFrame, rejected: pd.DataFrame, *,
                     use_stemmer: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-prediction scores, the comparison table) over every dataset x mode x setting.

    `predictions` holds dataset, mode, setting, prediction and answers; `rejected` one row per
    dataset x mode x setting that ran, with how many questions it could not prompt. Every such row
    gets a table row, in the order given there, even when it kept no prediction (n = 0, scores NaN).
    """
    missing = [c for c in TABLE_KEYS + ["rejected"] if c not in rejected.columns]
    if missing:
        raise ValueError(f"rejected-counts table lacks columns {missing}")
    if rejected.duplicated(TABLE_KEYS).any():
        raise ValueError("rejected-counts table names a dataset x mode x setting twice")
    scored = score_predictions(predictions, use_stemmer=use_stemmer)
    unknown = scored[TABLE_KEYS].drop_duplicates().merge(rejected[TABLE_KEYS], how="left", indicator=True)
    if (unknown["_merge"] == "left_only").any():
        raise ValueError(f"predictions of runs not in the rejected-counts table: "
                         f"{unknown.loc[unknown['_merge'] == 'left_only', TABLE_KEYS].values.tolist()}")
    means = aggregate_scores(scored, TABLE_KEYS)
    table = rejected[TABLE_KEYS + ["rejected"]].merge(means, on=TABLE_KEYS, how="left")
    table["n"] = table["n"].fillna(0).astype(int)
    table["rejected"] = table["rejected"].astype(int)
    for column in SCORE_COLUMNS:
        table[column] = table[column].astype(float)
    return scored, table[TABLE_COLUMNS]


__all__ = [
    "SCORE_COLUMNS",
    "TABLE_COLUMNS",
    "evaluation_table",
    "accuracy",
    "aggregate_scores",
    "exact_match",
    "normalize_answer",
    "rouge_l",
    "score_prediction",
    "score_predictions",
]
