import json

import pandas as pd
import pytest

from groundflow.cings.eval_fixture import BAD_LINES, eval_records, make_eval_fixture
from groundflow.cings.inference import (
    SETTINGS,
    EvalFileError,
    RawEntry,
    answer_text,
    assistant_prefill,
    build_prompt,
    infer_setting,
    parse_eval_text,
    select_docs,
    validate_record,
    validate_records,
)
from groundflow.generate.backends import SamplingParams
from groundflow.io import StageResult, check_accounting

SYSTEM_PROMPT = "Answer from the context."
GOLD = {"title": "France", "text": "Paris is the capital of France.", "score": "gold"}


def _record(**overrides):
    record = {"id": "q1", "question": " What is the capital of France? ", "answers": ["Paris"],
              "docs": [GOLD, {"title": "Rome", "text": "Rome is in Italy.", "score": 1.5}]}
    record.update(overrides)
    return record


def _clean(**overrides):
    record_id, record, reason = validate_record(RawEntry(line=1, value=_record(**overrides)))
    assert reason is None, reason
    return record


# ---------------------------------------------------------------------------------------------
# parsing and validation


def test_parse_jsonl_and_json_array():
    entries = parse_eval_text('{"id": 1}\n\n{broken\n{"id": 2}\n')
    assert [e.line for e in entries] == [1, 3, 4]
    assert entries[1].value is None and "line 3 is not valid JSON" in entries[1].error
    array = parse_eval_text(json.dumps([{"id": "a"}, {"id": "b"}]))
    assert [(e.line, e.value["id"]) for e in array] == [(1, "a"), (2, "b")]
    with pytest.raises(EvalFileError, match="eval.json: not a valid JSON array"):
        parse_eval_text('[{"id": 1},', source="eval.json")


def test_validate_record_cleans_a_good_record():
    record = _clean(answers=["Paris", "The", " paris "], id=7)
    assert record["id"] == "7"
    assert record["question"] == "What is the capital of France?"
    assert record["answers"] == ["Paris", "paris"]  # "The" normalises to nothing
    assert record["docs"] == [
        {"title": "France", "text": "Paris is the capital of France.", "score": None, "gold": True},
        {"title": "Rome", "text": "Rome is in Italy.", "score": 1.5, "gold": False},
    ]


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"question": "  "}, "no question"),
        ({"answers": "Paris"}, "no 'answers' list"),
        ({"answers": []}, "no 'answers' list"),
        ({"answers": ["Paris", 3]}, "answers must all be strings"),
        ({"answers": ["the", "."]}, "no gold answer is left after normalisation"),
        ({"docs": []}, "no 'docs' list"),
        ({"docs": [GOLD, "text"]}, "doc 1 is a str, not an object"),
        ({"docs": [{"title": "T", "text": "", "score": 1}]}, "doc 0 has no text"),
        ({"docs": [{"title": 5, "text": "x", "score": 1}]}, "doc 0 has a non-string title"),
        ({"docs": [{"title": "T", "text": "x"}]}, "doc 0 has no score"),
        ({"docs": [{"title": "T", "text": "x", "score": "high"}]}, "doc 0 has score 'high': neither 'gold' nor a number"),
        ({"docs": [{"title": "T", "text": "x", "score": float("nan")}]}, "doc 0 has a non-finite score"),
    ],
)
def test_validate_record_rejections_name_the_reason(overrides, reason):
    record_id, record, got = validate_record(RawEntry(line=4, value=_record(**overrides)))
    assert record is None and record_id == "q1"
    assert got.startswith(reason)


def test_entries_without_usable_id_get_their_line():
    assert validate_record(RawEntry(line=9, value=[1, 2]))[::2] == ("line:9", "line 9 is a list, not an object")
    assert validate_record(RawEntry(line=3, value=_record(id=None)))[::2] == ("line:3", "line 3 has no id")
    assert validate_record(RawEntry(line=5, error="line 5 is not valid JSON (x)"))[::2] == (
        "line:5", "line 5 is not valid JSON (x)")


def test_validate_records_counts_add_up_and_rejects_repeated_ids():
    entries = [RawEntry(1, _record()), RawEntry(2, _record(id="q2", docs=[])), RawEntry(3, _record()),
               RawEntry(4, error="line 4 is not valid JSON (x)")]
    result = validate_records(entries)
    assert result.counts == {"stage": "eval_records", "in": 4, "out": 1, "rejected": 3}
    assert list(result.kept["id"]) == ["q1"] and list(result.kept["line"]) == [1]
    # the later q1 is rejected under its line: q1 itself stays kept and only kept
    assert list(zip(result.rejects["id"], result.rejects["reason"])) == [
        ("q2", "no 'docs' list"),
        ("line:3", "line 3: duplicate id 'q1' (first at line 1)"),
        ("line:4", "line 4 is not valid JSON (x)"),
    ]


def test_an_id_belongs_to_its_first_line_even_when_that_line_is_rejected():
    # q1's first line is invalid, its second valid, its third invalid: keeping the second would
    # make q1 both kept and rejected; rejecting the third under q1 would reject q1 twice
    entries = [RawEntry(1, _record(docs=[])), RawEntry(2, _record()), RawEntry(3, _record(question=""))]
    result = validate_records(entries)
    assert result.kept.empty
    assert list(zip(result.rejects["id"], result.rejects["reason"])) == [
        ("q1", "no 'docs' list"),
        ("line:2", "line 2: duplicate id 'q1' (first at line 1)"),
        ("line:3", "line 3: duplicate id 'q1' (first at line 1)"),
    ]
    assert check_accounting("eval_records", ["q1", "line:2", "line:3"],
                            StageResult(kept=result.kept, rejects=result.rejects))["rejected"] == 3


def test_fixture_file_round_trip(tmp_path):
    summary = make_eval_fixture(tmp_path / "eval.jsonl", n_questions=12)
    assert summary["valid"] == 12 and summary["bad"] == len(BAD_LINES) + 1
    result = validate_records(parse_eval_text((tmp_path / "eval.jsonl").read_text()))
    assert result.counts["in"] == 12 + len(BAD_LINES) + 1
    assert result.counts["out"] == 12
    reasons = list(result.rejects["reason"])
    expected = ["duplicate id 'nq-0' (first at line 1)"] + [reason for reason, _ in BAD_LINES]
    assert len(reasons) == len(expected)
    assert all(sum(e in r for r in reasons) == 1 for e in expected), reasons
    assert not set(result.kept["id"]) & set(result.rejects["id"])  # nq-0 is kept, its repeat is a line
    assert eval_records(12) == eval_records(12)  # same file for the same arguments


# ---------------------------------------------------------------------------------------------
# passages and prompts


def _docs():
    return [
        {"title": "", "text": "short gold", "score": None, "gold": True},
        {"title": "G", "text": "a longer gold passage", "score": None, "gold": True},
        {"title": "R1", "text": "retrieved one", "score": 0.5, "gold": False},
        {"title": "R2", "text": "retrieved two", "score": 1.5, "gold": False},
        {"title": "R3", "text": "retrieved three", "score": 0.5, "gold": False},
    ]


def test_select_docs_one_and_k():
    docs = _docs()
    assert [d["text"] for d in select_docs(docs, 1)] == ["a longer gold passage"]
    # first gold with a title, then retrieved by score, ties in file order
    assert [d["title"] for d in select_docs(docs, 3)] == ["G", "R2", "R1"]
    assert [d["title"] for d in select_docs(docs, 10)] == ["G", "R2", "R1", "R3"]
    # without gold passages (or with them excluded): the retriever's ranking alone
    assert [d["title"] for d in select_docs(docs[2:], 1)] == ["R2"]
    assert [d["title"] for d in select_docs(docs, 2, use_gold=False)] == ["R2", "R1"]
    # no gold passage has a title: the first gold one leads
    assert [d["text"] for d in select_docs([docs[0], docs[2]], 2)] == ["short gold", "retrieved one"]
    with pytest.raises(ValueError, match="k must be >= 1"):
        select_docs(docs, 0)


def test_assistant_prefill_layouts():
    docs = _docs()
    assert assistant_prefill(docs[1:2]) == "## Context G a longer gold passage ## Answer"
    assert assistant_prefill(docs[:1]) == "## Context short gold ## Answer"
    assert assistant_prefill(docs[1:3]) == "## Context1: G a longer gold passage\n\nContext2: R1 retrieved one ## Answer"
    with pytest.raises(ValueError, match="at least one passage"):
        assistant_prefill([])


def test_build_prompt_per_setting():
    record = _clean()
    system = {"role": "system", "content": SYSTEM_PROMPT}
    question = {"role": "user", "content": "What is the capital of France?"}

    one = build_prompt(record, "prefilled_1doc", ndocs=5, system_prompt=SYSTEM_PROMPT)
    assert one.messages == (system, question)
    assert one.assistant_prefix == "## Context France Paris is the capital of France. ## Answer"

    k = build_prompt(record, "prefilled_kdocs", ndocs=5, system_prompt=SYSTEM_PROMPT)
    assert k.messages == (system, question)
    assert k.assistant_prefix == ("## Context1: France Paris is the capital of France.\n\n"
                                  "Context2: Rome Rome is in Italy. ## Answer")

    closed = build_prompt(record, "closed_book", ndocs=5, system_prompt=SYSTEM_PROMPT)
    assert closed.messages == (system, question) and closed.assistant_prefix == "" and closed.docs == ()

    rag = build_prompt(record, "context_in_input", ndocs=1, system_prompt=SYSTEM_PROMPT)
    assert rag.messages == (system, {"role": "user", "content":
                                     "What is the capital of France? ### Context: Context1: France Paris is the capital of France."})
    assert rag.assistant_prefix == "### Answer"

    bare = build_prompt(record, "closed_book", ndocs=1, system_prompt="")
    assert bare.messages == (question,)
    assert set(SETTINGS) == {"prefilled_1doc", "prefilled_kdocs", "closed_book", "context_in_input"}
    with pytest.raises(ValueError, match="unknown setting 'open_book'"):
        build_prompt(record, "open_book", ndocs=1, system_prompt=SYSTEM_PROMPT)
    gold_only = _clean(docs=[GOLD])
    with pytest.raises(ValueError, match="no passage to show \\(gold passages are excluded\\)"):
        build_prompt(gold_only, "prefilled_1doc", ndocs=1, use_gold=False, system_prompt=SYSTEM_PROMPT)


@pytest.mark.parametrize(
    "generation, answer",
    [
        (" Paris", "Paris"),
        (" Paris\n is  the capital", "Paris is the capital"),
        ("## Context France is in Europe. ## Answer Paris", "Paris"),
        ("## Context1: a\n\nContext2: b ## Answer: Paris", "Paris"),
        (" Paris ## Context more text ## Answer and France", "Paris and France"),
        (" Paris ## Context cut off befo", "Paris"),
        ("## Answer Paris", "Paris"),
        ("", ""),
    ],
)
def test_answer_text(generation, answer):
    assert answer_text(generation) == answer


# ---------------------------------------------------------------------------------------------
# the stage function over a fake generator (the real one: tests/stage/test_cings_infer.py)


class EchoGenerator:
    """Answers every prompt with its pre-fill's last passage title; records what it was asked."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        return [[f" {p.assistant_prefix[:12]}"] * params.n for p in prompts]

    def describe(self):
        return {"backend": "echo"}


def test_infer_setting_keeps_and_rejects():
    records = pd.DataFrame([_clean(), _clean(id="q2", docs=[GOLD])])
    generator = EchoGenerator()
    params = SamplingParams(max_new_tokens=4)
    result = infer_setting(records, generator, params, "prefilled_kdocs", ndocs=2, use_gold=False,
                          system_prompt=SYSTEM_PROMPT)
    assert len(generator.calls) == 1 and len(generator.calls[0][0]) == 1  # one batched call
    assert list(result.kept["id"]) == ["q1"]
    assert result.kept.iloc[0]["generation"] == " ## Context R"
    assert result.kept.iloc[0]["prediction"] == ""  # an unfinished written context is not an answer
    assert result.kept.iloc[0]["doc_titles"] == ["Rome"] and result.kept.iloc[0]["n_docs"] == 1
    assert list(zip(result.rejects["id"], result.rejects["reason"])) == [
        ("q2", "no passage to show (gold passages are excluded)")]
    with pytest.raises(ValueError, match="one answer per question"):
        infer_setting(records, generator, SamplingParams(max_new_tokens=4, n=2, do_sample=True), "closed_book", ndocs=1,
                      system_prompt=SYSTEM_PROMPT)
