"""Scores for CINGS' evaluation, chosen per dataset: exact match, accuracy, ROUGE-L, label accuracy.

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
- label accuracy (FEVER; our own definition, the original's scorer is not released): the gold
  answers name a label (`SUPPORTS`); a free-form prediction is mapped to a label by the words it
  uses. Each label has a list of words or phrases (`FEVER_LABELS`: SUPPORTS <- supports, true,
  yes, correct, ...; REFUTES <- refutes, false, no, incorrect, not true, ...). The normalised
  prediction is read left to right and, at each word, the longest phrase of any label starting
  there is taken (its words are then used up), so "not true" counts for REFUTES and not also
  for SUPPORTS through "true". The prediction names a label when its phrases all belong to that
  one label; no phrase, or phrases of two labels ("yes, it is false"), names none and scores 0.
Every score is in [0, 1]. The evaluation table is long: one row per dataset x mode x setting x
metric (the dataset's metrics, in its configured order); `readable_table` pivots it with the
training modes as columns, the comparison the paper makes.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

import pandas as pd

SCORE_COLUMNS = ["exact_match", "accuracy", "rouge_l"]
# every metric a dataset may ask for (config cings.inference.datasets[].metrics), in column order
METRICS = ("exact_match", "accuracy", "rouge_l", "label_accuracy")
DEFAULT_METRICS = ("exact_match", "accuracy")
# KILT's FEVER has two labels (NOT ENOUGH INFO was dropped); the words a free answer uses for each
FEVER_LABELS: dict[str, tuple[str, ...]] = {
    "SUPPORTS": ("supports", "supported", "support", "true", "yes", "correct", "right"),
    "REFUTES": ("refutes", "refuted", "refute", "false", "no", "incorrect", "wrong",
                "not true", "not correct", "not right", "not supported", "does not support"),
}

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


def check_labels(labels: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[tuple[str, ...], ...]]:
    """The label mapping as label -> its phrases, each phrase a tuple of normalised words
    (None: `FEVER_LABELS`). Raises ValueError for a label without words, a phrase that normalises
    to nothing, or one phrase given to two labels (a prediction using it would name both)."""
    labels = FEVER_LABELS if labels is None else labels
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError("label_accuracy needs a mapping of at least one label to its words")
    owner: dict[tuple[str, ...], str] = {}
    phrases: dict[str, tuple[tuple[str, ...], ...]] = {}
    names: dict[str, str] = {}
    for label, words in labels.items():
        if not normalize_answer(str(label)):
            raise ValueError(f"label {label!r} normalises to nothing")
        if normalize_answer(str(label)) in names:
            raise ValueError(f"labels {names[normalize_answer(str(label))]!r} and {label!r} are the same label")
        names[normalize_answer(str(label))] = str(label)
        if isinstance(words, str) or not list(words):
            raise ValueError(f"label {label!r} needs a list of words naming it, not {words!r}")
        mine = []
        for word in words:
            phrase = tuple(normalize_answer(str(word)).split())
            if not phrase:
                raise ValueError(f"label {label!r}: word {word!r} normalises to nothing")
            if phrase in owner and owner[phrase] != label:
                raise ValueError(f"{word!r} names both {owner[phrase]!r} and {label!r}")
            owner[phrase] = str(label)
            mine.append(phrase)
        phrases[str(label)] = tuple(dict.fromkeys(mine))
    return phrases


def predicted_label(prediction: str, labels: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """The one label the prediction's words name, or None (no label word, or words of two labels)."""
    phrases = check_labels(labels)
    by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for label, label_phrases in phrases.items():
        for phrase in label_phrases:
            by_first.setdefault(phrase[0], []).append((phrase, label))
    words = normalize_answer(prediction).split()
    named: set[str] = set()
    index = 0
    while index < len(words):
        matches = [(phrase, label) for phrase, label in by_first.get(words[index], ())
                   if tuple(words[index:index + len(phrase)]) == phrase]
        if not matches:
            index += 1
            continue
        phrase, label = max(matches, key=lambda match: len(match[0]))
        named.add(label)
        index += len(phrase)
    return named.pop() if len(named) == 1 else None


def gold_label(answers: Sequence[str], labels: Mapping[str, Sequence[str]] | None = None) -> str:
    """The label the gold answers name (`SUPPORTS`, `supports`: compared normalised); ValueError
    when they name none of the labels or two different ones."""
    known = {normalize_answer(label): label for label in check_labels(labels)}
    found = {known[normalize_answer(gold)] for gold in _golds(answers) if normalize_answer(gold) in known}
    if len(found) != 1:
        problem = "name no label" if not found else f"name several labels {sorted(found)}"
        raise ValueError(f"gold answers {list(answers)!r} {problem} of {list(known.values())}")
    return found.pop()


def label_accuracy(prediction: str, answers: Sequence[str], labels: Mapping[str, Sequence[str]] | None = None) -> float:
    """1.0 when the prediction names (see the module docstring) the label of the gold answers, else 0.0."""
    return float(predicted_label(prediction, labels) == gold_label(answers, labels))


@lru_cache(maxsize=4)
def _rouge_scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, answers: Sequence[str], *, use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure of the prediction against the best-matching gold answer."""
    scorer = _rouge_scorer(use_stemmer)
    return max(scorer.score(gold, prediction)["rougeL"].fmeasure for gold in _golds(answers))


def score_metric(metric: str, prediction: str, answers: Sequence[str], *,
                 labels: Mapping[str, Sequence[str]] | None = None, use_stemmer: bool = False) -> float:
    """One metric of `METRICS` for one prediction (`labels`: label_accuracy's mapping, None: FEVER's)."""
    if metric == "exact_match":
        return exact_match(prediction, answers)
    if metric == "accuracy":
        return accuracy(prediction, answers)
    if metric == "rouge_l":
        return rouge_l(prediction, answers, use_stemmer=use_stemmer)
    if metric == "label_accuracy":
        return label_accuracy(prediction, answers, labels)
    raise ValueError(f"unknown metric {metric!r}; one of {list(METRICS)}")


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    """The metrics as a tuple; ValueError for none, an unknown one or a repeated one."""
    if isinstance(metrics, str):
        raise TypeError(f"metrics must be a list of names, not the string {metrics!r}")
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if not metrics or unknown or len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics {list(metrics)} must be distinct names of {list(METRICS)}, at least one")
    return metrics


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
TABLE_COLUMNS = TABLE_KEYS + ["metric", "n", "rejected", "score"]


@dataclass(frozen=True)
class DatasetScoring:
    """How one dataset is scored: its metrics in table order, label_accuracy's mapping (None: FEVER's)."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    labels: Mapping[str, Sequence[str]] | None = None

    def __post_init__(self):
        object.__setattr__(self, "metrics", check_metrics(self.metrics))
        if "label_accuracy" in self.metrics:
            check_labels(self.labels)


def score_dataset(predictions: pd.DataFrame, scoring: DatasetScoring, *, use_stemmer: bool = False) -> pd.DataFrame:
    """The predictions of one dataset with a column per metric of `METRICS`: the dataset's own
    metrics scored, the others NaN (one scores table holds every dataset)."""
    missing = [c for c in ("prediction", "answers") if c not in predictions.columns]
    if missing:
        raise ValueError(f"prediction table lacks columns {missing}")
    scored = predictions.copy()
    pairs = list(zip(predictions["prediction"].astype(str), predictions["answers"]))
    for metric in METRICS:
        if metric in scoring.metrics:
            scored[metric] = [score_metric(metric, prediction, list(answers), labels=scoring.labels,
                                           use_stemmer=use_stemmer) for prediction, answers in pairs]
        else:
            scored[metric] = math.nan
        scored[metric] = scored[metric].astype(float)
    return scored


def evaluation_table(predictions: pd.DataFrame, runs: pd.DataFrame, datasets: Mapping[str, DatasetScoring], *,
                     use_stemmer: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-prediction scores, the long comparison table).

    `predictions` holds dataset, mode, setting, prediction and answers; `runs` one row per
    dataset x mode x setting that ran, with how many of its questions it could not prompt
    (`rejected`); `datasets` each dataset's scoring. The table has one row per run (in `runs`'
    order) x metric of its dataset, even when the run kept no prediction (n = 0, score NaN).
    """
    missing = [c for c in TABLE_KEYS + ["rejected"] if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table lacks columns {missing}")
    if runs.duplicated(TABLE_KEYS).any():
        raise ValueError("runs table names a dataset x mode x setting twice")
    unscored = sorted(set(runs["dataset"]) - set(datasets))
    if unscored:
        raise ValueError(f"no scoring given for datasets {unscored}")
    missing = [c for c in TABLE_KEYS + ["prediction", "answers"] if c not in predictions.columns]
    if missing:
        raise ValueError(f"prediction table lacks columns {missing}")
    unknown = predictions[TABLE_KEYS].drop_duplicates().merge(runs[TABLE_KEYS], how="left", indicator=True)
    if (unknown["_merge"] == "left_only").any():
        raise ValueError(f"predictions of runs not in the runs table: "
                         f"{unknown.loc[unknown['_merge'] == 'left_only', TABLE_KEYS].values.tolist()}")
    parts = [score_dataset(predictions[predictions["dataset"] == name], datasets[name], use_stemmer=use_stemmer)
             for name in dict.fromkeys(runs["dataset"])]
    parts = [p for p in parts if len(p)]
    scored = (pd.concat(parts).sort_index() if parts
              else predictions.assign(**{m: pd.Series(dtype=float) for m in METRICS}).iloc[0:0])
    groups = {key: group for key, group in scored.groupby(TABLE_KEYS, sort=False)} if len(scored) else {}
    rows = []
    for run in runs.itertuples(index=False):
        key = (run.dataset, run.mode, run.setting)
        group = groups.get(key)
        n = 0 if group is None else len(group)
        for metric in datasets[run.dataset].metrics:
            score = float(group[metric].mean()) if n else math.nan
            rows.append({"dataset": run.dataset, "mode": run.mode, "setting": run.setting, "metric": metric,
                         "n": n, "rejected": int(run.rejected), "score": score})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS).astype({"n": "int64", "rejected": "int64", "score": "float64"})
    return scored.reset_index(drop=True), table


def readable_table(table: pd.DataFrame) -> pd.DataFrame:
    """The long table pivoted for reading: one row per dataset x setting x metric, the training
    modes as columns (their scores), then each mode's `n` (questions answered); first-seen order."""
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"evaluation table lacks columns {missing}")
    modes = list(dict.fromkeys(table["mode"]))
    rows: dict[tuple, dict] = {}
    for row in table.itertuples(index=False):
        line = rows.setdefault((row.dataset, row.setting, row.metric),
                               {"dataset": row.dataset, "setting": row.setting, "metric": row.metric})
        line[row.mode] = row.score
        line[f"n_{row.mode}"] = row.n
    columns = ["dataset", "setting", "metric", *modes, *(f"n_{m}" for m in modes)]
    return pd.DataFrame(list(rows.values()), columns=columns)


__all__ = [
    "DEFAULT_METRICS",
    "DatasetScoring",
    "FEVER_LABELS",
    "METRICS",
    "SCORE_COLUMNS",
    "TABLE_COLUMNS",
    "accuracy",
    "aggregate_scores",
    "check_labels",
    "check_metrics",
    "evaluation_table",
    "exact_match",
    "gold_label",
    "label_accuracy",
    "normalize_answer",
    "predicted_label",
    "readable_table",
    "rouge_l",
    "score_dataset",
    "score_metric",
    "score_prediction",
    "score_predictions",
]
