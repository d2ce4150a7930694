"""TSST evaluation metrics (groundflow.tsst.metrics): the original's greedy/absolute/voting accuracy,
its zero-chain voting quirk beside the fixed count, a real majority vote over answers, and direct
accuracy over all questions."""

import math

import pytest

from groundflow.tsst.metrics import (
    QuestionKey,
    VerifiedChain,
    direct_metrics,
    majority_option,
    search_metrics,
    table_rows,
)

Q = QuestionKey(choices=("red", "blue", "green"), answer_label=2)


def chain(rank, correct, answer, score=0.5):
    return VerifiedChain(rank=rank, score=score, correct=correct, answer=answer)


def metrics(chains, questions):
    return {name: (value, n) for name, value, n in search_metrics(chains, questions)}


def test_search_metrics_as_the_original_defines_them_and_the_fixed_vote():
    questions = {"q1": Q, "q2": Q, "q3": Q, "q4": Q}
    chains = {
        "q1": [chain(0, True, "B"), chain(1, False, "A"), chain(2, False, "C")],  # top right, 1/3 correct
        "q2": [chain(0, False, "A"), chain(1, True, "blue")],  # a tie: half correct
        "q3": [chain(0, False, "red"), chain(1, False, "red"), chain(2, False, "C")],
        # q4: no chain at all
    }
    m = metrics(chains, questions)
    assert m["greedy_acc"] == (0.25, 4)
    assert m["absolute_acc"] == (2 / 8, 8)
    assert m["voting_acc_original"] == (0.5, 4)  # q2 (tie) and q4 (zero chains, counted correct)
    assert m["voting_acc"] == (0.25, 4)  # q2 only
    # q1: A, B, C one vote each, scores equal: the best rank wins (B). q2: A vs B, equal: rank 0 (A).
    assert m["majority_acc"] == (0.25, 4)


def test_majority_vote_counts_answers_not_verdicts():
    # two of three chains say "red" (wrong), one says B: the vote is wrong though one chain is right
    chains = [chain(0, True, "B", 0.9), chain(1, False, "red", 0.1), chain(2, False, "A. red", 0.1)]
    assert majority_option(chains, Q) == ("option", 0)
    # free-text answers the judge found correct vote for the right option
    judged = [chain(0, True, "the colour of the sky", 0.2), chain(1, True, "it is bluish", 0.2), chain(2, False, "A", 0.9)]
    assert majority_option(judged, Q) == ("option", 1)
    # a tie in votes goes to the larger summed score
    tie = [chain(0, False, "red", 0.1), chain(1, True, "blue", 0.8)]
    assert majority_option(tie, Q) == ("option", 1)
    # unparseable wrong answers vote as text; no answer, no vote
    assert majority_option([chain(0, False, "a kind of teal"), chain(1, False, None)], Q) == ("text", "a kind of teal")
    assert majority_option([chain(0, False, None)], Q) is None


def test_empty_split_gives_nan_not_a_crash():
    m = metrics({}, {})
    assert all(math.isnan(v) and n == 0 for v, n in m.values())


def test_chains_of_unknown_questions_are_refused():
    with pytest.raises(ValueError, match="q9"):
        search_metrics({"q9": [chain(0, True, "B")]}, {"q1": Q})


def test_direct_accuracy_counts_failed_answers_as_wrong():
    # q3 has no answer (its generation failed): it stays in the denominator
    assert direct_metrics({"q1": True, "q2": False}, ["q1", "q2", "q3"]) == [("accuracy", 1 / 3, 3)]
    with pytest.raises(ValueError, match="q7"):
        direct_metrics({"q7": True}, ["q1"])


def test_table_rows_are_long():
    rows = table_rows(1, "direct", [("accuracy", 0.5, 4)])
    assert rows == [{"round": 1, "mode": "direct", "metric": "accuracy", "value": 0.5, "n": 4}]
    with pytest.raises(ValueError):
        table_rows(1, "beam", [])
