"""The KILT-style file builder's pure core: question and corpus checks with per-entry reasons,
ids kept or rejected once, records assembled from rankings (gold first, no repeated gold, k
retrieved), and the demo fixture's files."""

import json

import numpy as np
import pytest

from groundflow.cings.inference import parse_eval_text, validate_records
from groundflow.cings.kilt_build import (
    CORPUS_STAGE,
    QUESTIONS_STAGE,
    assemble_records,
    candidates_needed,
    check_question,
    kilt_jsonl,
    read_corpus,
    read_questions,
)
from groundflow.cings.retrieval_fixture import (
    BAD_CORPUS_LINES,
    BAD_QUESTION_LINES,
    PARAPHRASES,
    WITH_GOLD,
    make_retrieval_fixture,
    retrieval_corpus,
    retrieval_questions,
)
from groundflow.cings.eval_fixture import FACTS


def jsonl(*values) -> bytes:
    return ("\n".join(v if isinstance(v, str) else json.dumps(v) for v in values) + "\n").encode("utf-8")


GOOD = {"id": "q1", "question": " Who? ", "answers": ["Ann "], "gold": [{"title": "T", "text": " a b "}]}


@pytest.mark.parametrize("change,reason", [
    ({"question": "  "}, "field 'question' is empty"),
    ({"answers": "Ann"}, "field 'answers' is a str, not a list"),
    ({"answers": []}, "field 'answers' is empty"),
    ({"answers": ["Ann", 3]}, "field 'answers' holds a non-string answer"),
    ({"answers": ["the", "?"]}, "no gold answer is left after normalisation"),
    ({"gold": {"title": "T", "text": "x"}}, "field 'gold' is a dict, not a list"),
    ({"gold": ["x"]}, "gold 0 is a str, not an object"),
    ({"gold": [{"title": "T", "text": "x"}, {"title": "U", "text": ""}]}, "gold 1: field 'text' is empty"),
    ({"gold": [{"title": 5, "text": "x"}]}, "gold 0: field 'title' is a int, not a string"),
])
def test_a_bad_question_is_rejected_with_its_reason(change, reason):
    clean, problem = check_question({**GOOD, **change})
    assert clean is None and problem == reason


def test_a_good_question_is_cleaned_and_gold_may_be_empty_or_absent():
    clean, problem = check_question(GOOD)
    assert problem is None
    assert clean == {"question": "Who?", "answers": ["Ann"], "gold": [{"title": "T", "text": "a b"}]}
    for gold in ([], None):
        assert check_question({**GOOD, "gold": gold})[0]["gold"] == []
    no_gold = {k: v for k, v in GOOD.items() if k != "gold"}
    assert check_question(no_gold)[0]["gold"] == []
    assert check_question({**GOOD, "gold": [{"text": "x"}]})[0]["gold"] == [{"title": "", "text": "x"}]


def test_questions_file_accounting_and_duplicate_ids():
    text = jsonl(GOOD, "{not json", [1, 2], {"question": "no id", "answers": ["a"]},
                 {**GOOD, "question": "again"}, {**GOOD, "id": 7, "answers": []}, {**GOOD, "id": "q2"})
    checked = read_questions(text)
    assert [q["id"] for q in checked.kept] == ["q1", "q2"]
    rejects = dict(zip(checked.rejects["id"], checked.rejects["reason"]))
    assert rejects["line:2"].startswith("line 2 is not valid JSON")
    assert rejects["line:3"] == "line 3 is a list, not an object"
    assert rejects["line:4"] == "line 4: missing field 'id'"
    assert rejects["line:5"] == "line 5: duplicate id 'q1' (first at line 1)"
    assert rejects["7"] == "field 'answers' is empty"
    assert set(checked.rejects["stage"]) == {QUESTIONS_STAGE}
    assert checked.counts == {"stage": QUESTIONS_STAGE, "in": 7, "out": 2, "rejected": 5}


def test_corpus_bad_entries_cost_only_themselves():
    text = jsonl({"id": "p1", "title": "A", "text": "alpha"}, {"id": "p2", "title": "B", "text": "  "},
                 {"id": "p3", "title": ["B"], "text": "beta"}, {"id": "p1", "title": "C", "text": "gamma"},
                 '{"id": "p9"', {"id": "p4", "text": "delta"})
    checked = read_corpus(text)
    assert checked.kept == [{"id": "p1", "title": "A", "text": "alpha"}, {"id": "p4", "title": "", "text": "delta"}]
    rejects = dict(zip(checked.rejects["id"], checked.rejects["reason"]))
    assert list(rejects) == ["p2", "p3", "line:4", "line:5"]
    assert rejects["p2"] == "field 'text' is empty" and rejects["p3"] == "field 'title' is a list, not a string"
    assert rejects["line:4"] == "line 4: duplicate id 'p1' (first at line 1)"
    assert rejects["line:5"].startswith("line 5 is not valid JSON")
    assert set(checked.rejects["stage"]) == {CORPUS_STAGE}
    assert checked.counts == {"stage": CORPUS_STAGE, "in": 6, "out": 2, "rejected": 4}


PASSAGES = [{"id": f"p{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(6)]


def test_records_put_gold_first_and_do_not_repeat_a_retrieved_gold_passage():
    questions = [
        {"id": "a", "question": "qa", "answers": ["x"], "gold": [{"title": "G", "text": "text  2"}]},
        {"id": "b", "question": "qb", "answers": ["y"], "gold": []},
    ]
    k = 2
    assert candidates_needed(questions, k) == 3
    indices = np.array([[2, 4, 0], [5, 1, 3]])
    scores = np.array([[0.9, 0.5, 0.25], [0.8, 0.7, 0.1]], dtype=np.float32)
    records, rejected = assemble_records(questions, PASSAGES, indices, scores, k)
    assert rejected == []
    assert records[0] == {"id": "a", "question": "qa", "answers": ["x"], "docs": [
        {"title": "G", "text": "text  2", "score": "gold"},
        # p2 is the gold passage (whitespace aside): skipped, and the third candidate fills in
        {"id": "p4", "title": "T4", "text": "text 4", "score": 0.5},
        {"id": "p0", "title": "T0", "text": "text 0", "score": 0.25},
    ]}
    assert [d["id"] for d in records[1]["docs"]] == ["p5", "p1"]  # k retrieved, best first
    assert records[1]["docs"][0]["score"] == pytest.approx(0.8)


def test_a_question_without_gold_and_without_retrieval_is_rejected():
    questions = [{"id": "a", "question": "q", "answers": ["x"], "gold": []},
                 {"id": "b", "question": "q", "answers": ["x"], "gold": [{"title": "", "text": "g"}]}]
    records, rejected = assemble_records(questions, [], np.zeros((2, 0), np.int64), np.zeros((2, 0), np.float32), 3)
    assert [r["id"] for r in records] == ["b"]
    assert rejected == [("a", "no passage: no gold passage and nothing retrieved (empty corpus)")]


def test_built_records_are_read_by_the_evaluation_as_they_are():
    questions = read_questions(jsonl(GOOD, {**GOOD, "id": "q2", "gold": []})).kept
    records, _ = assemble_records(questions, PASSAGES, np.array([[0, 1], [3, 2]]),
                                  np.array([[0.5, 0.4], [0.3, 0.2]], np.float32), 2)
    result = validate_records(parse_eval_text(kilt_jsonl(records)))
    assert result.counts == {"stage": "eval_records", "in": 2, "out": 2, "rejected": 0}
    docs = result.kept.loc[0, "docs"]
    assert [d["gold"] for d in docs] == [True, False, False] and docs[1]["score"] == 0.5


def test_the_demo_fixture_files(tmp_path):
    summary = make_retrieval_fixture(tmp_path)
    again = make_retrieval_fixture(tmp_path / "again")
    for name in ("questions.jsonl", "corpus.jsonl"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    questions = read_questions(tmp_path / "questions.jsonl")
    corpus = read_corpus(tmp_path / "corpus.jsonl")
    assert questions.kept == [{"id": q["id"], "question": q["question"], "answers": q["answers"], "gold": q["gold"]}
                              for q in retrieval_questions()]
    assert corpus.kept == retrieval_corpus()
    # a repeated id plus the listed bad lines, each rejected for the listed reason
    assert questions.counts["rejected"] == summary["bad_questions"] == len(BAD_QUESTION_LINES) + 1
    assert corpus.counts["rejected"] == summary["bad_passages"] == len(BAD_CORPUS_LINES) + 1
    for bad, checked in ((BAD_QUESTION_LINES, questions), (BAD_CORPUS_LINES, corpus)):
        reasons = list(checked.rejects["reason"])
        for reason, _ in bad:
            assert sum(reason in r for r in reasons) == 1, (reason, reasons)
        assert sum("duplicate id" in r for r in reasons) == 1
    assert summary == {**again, "questions": summary["questions"], "corpus": summary["corpus"]}
    # questions are reworded: none is the fact's own question, and half carry no gold passage
    originals = {qid: question for qid, question, *_ in FACTS}
    assert all(PARAPHRASES[q["id"]] != originals[q["id"]] for q in questions.kept)
    assert {q["id"] for q in questions.kept if q["gold"]} == set(WITH_GOLD)
    assert len(corpus.kept) >= 3 * len(questions.kept)
