"""TSST's evaluation metrics, over verified chains (search) and verified answers (direct).

Search, as the original defines them (§8), each over ALL questions of the split:
- greedy_acc: the top-scored chain is correct (a question without chains counts wrong);
- absolute_acc: correct chains / all chains, pooled over questions (n = chains);
- voting_acc_original: at least half of a question's chains are correct (>= len/2, so a tie
  counts), and, as in the original, a question with no chain counts as correct (0 >= 0);
- voting_acc: the same with a question without chains counted wrong;
- majority_acc: a real vote over extracted answers, which the original does not have: each chain's
  answer votes for the option it names (by letter or text; an answer the judge found correct votes
  for the correct option), else for its normalised text; the most votes win, ties broken by the
  summed chain score, then by the best-ranked chain; correct when the winner is the right option.
Direct: accuracy = answers verified true / all questions; a failed or empty answer counts wrong
(the original dropped a batch that raised from its denominator).

Rows are long: (round, mode, metric, value, n), mode "search" or "direct".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from groundflow.judge.llm_judge import normalise, option_index

SEARCH_METRICS = ("greedy_acc", "absolute_acc", "voting_acc", "voting_acc_original", "majority_acc")
DIRECT_METRICS = ("accuracy",)
TABLE_COLUMNS = ("round", "mode", "metric", "value", "n")


@dataclass(frozen=True)
class VerifiedChain:
    rank: int  # 0 = highest score
    score: float
    correct: bool
    answer: str | None  # the extracted answer


@dataclass(frozen=True)
class QuestionKey:
    choices: tuple[str, ...]
    answer_label: int  # 1-based


def _ratio(hits: int, n: int) -> float:
    return hits / n if n else float("nan")


def majority_option(chains: Sequence[VerifiedChain], question: QuestionKey) -> object | None:
    """The winning vote of a question's chains (see the module docstring), None without votes."""
    tally: dict[object, list[float]] = {}
    for chain in sorted(chains, key=lambda c: c.rank):
        index = option_index(chain.answer, question.choices)
        if index is None and chain.correct:
            index = question.answer_label - 1
        if index is not None:
            key: object = ("option", index)
        elif chain.answer:
            key = ("text", normalise(chain.answer))
        else:
            continue
        entry = tally.setdefault(key, [0, 0.0, chain.rank])
        entry[0] += 1
        entry[1] += float(chain.score)
    if not tally:
        return None
    return max(tally, key=lambda k: (tally[k][0], tally[k][1], -tally[k][2]))


def search_metrics(chains: Mapping[str, Sequence[VerifiedChain]], questions: Mapping[str, QuestionKey]) -> list[tuple[str, float, int]]:
    """(metric, value, n) for the search over `questions` (all of them; ids missing from `chains`
    have no chain)."""
    unknown = sorted(set(chains) - set(questions))
    if unknown:
        raise ValueError(f"chains of {len(unknown)} questions not in the question table, e.g. {unknown[:3]}")
    n_questions = len(questions)
    greedy = voting = voting_original = majority = 0
    n_chains = n_correct_chains = 0
    for qid, question in questions.items():
        question_chains = sorted(chains.get(qid, ()), key=lambda c: c.rank)
        correct = sum(c.correct for c in question_chains)
        n_chains += len(question_chains)
        n_correct_chains += correct
        if question_chains and question_chains[0].correct:
            greedy += 1
        half = correct >= len(question_chains) / 2
        voting_original += half
        voting += half and bool(question_chains)
        majority += majority_option(question_chains, question) == ("option", question.answer_label - 1)
    return [
        ("greedy_acc", _ratio(greedy, n_questions), n_questions),
        ("absolute_acc", _ratio(n_correct_chains, n_chains), n_chains),
        ("voting_acc", _ratio(voting, n_questions), n_questions),
        ("voting_acc_original", _ratio(voting_original, n_questions), n_questions),
        ("majority_acc", _ratio(majority, n_questions), n_questions),
    ]


def direct_metrics(correct: Mapping[str, bool], question_ids: Sequence[str]) -> list[tuple[str, float, int]]:
    """(metric, value, n) for direct answers: verified true / all questions."""
    ids = list(dict.fromkeys(question_ids))
    unknown = sorted(set(correct) - set(ids))
    if unknown:
        raise ValueError(f"answers of {len(unknown)} questions not in the question table, e.g. {unknown[:3]}")
    hits = sum(bool(correct.get(qid, False)) for qid in ids)
    return [("accuracy", _ratio(hits, len(ids)), len(ids))]


def table_rows(round_index: int, mode: str, metrics: Sequence[tuple[str, float, int]]) -> list[dict]:
    if mode not in ("search", "direct"):
        raise ValueError(f"mode must be 'search' or 'direct', not {mode!r}")
    return [{"round": int(round_index), "mode": mode, "metric": metric, "value": float(value), "n": int(n)}
            for metric, value, n in metrics]


def plot_rows(table):
    """The evaluation table (a DataFrame) in the long form groundflow.report.plots.plot_eval_table
    draws: one panel per mode x metric, one bar per round (`group="round"`)."""
    import pandas as pd

    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"TSST evaluation table lacks columns {missing}")
    return pd.DataFrame({"dataset": table["mode"].astype(str), "metric": table["metric"].astype(str),
                         "setting": "all questions", "round": [f"round {r}" for r in table["round"]],
                         "score": table["value"].astype(float)})
