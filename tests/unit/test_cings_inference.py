import json

import pandas as pd
import pytest

from groundflow.cings.eval_fixture import (BAD_BY_KIND, BAD_LINES, EVAL_KINDS, FACTS, FIXTURE_DATASETS, eval_records,
                                          fixture_datasets, kind_records, make_eval_fixture, make_qa_fixture)
from groundflow.cings.inference import (
    SETTINGS,
    EvalFileError,
    RawEntry,
    answer_text,
    assistant_prefill,
    build_prompt,
    check_dataset,
    infer_requests,
    infer_setting,
    job_runs,
    load_instruction,
    parse_eval_text,
    read_eval_records,
    record_labels,
    resolve_dataset,
    resolved_entry,
    select_docs,
    setting_counts,
    setting_requests,
    split_request_id,
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
        ({"question": "  "}, "field 'question' is empty"),
        ({"answers": "Paris"}, "field 'answers' is a str, not a list"),
        ({"answers": []}, "field 'answers' is empty"),
        ({"answers": ["Paris", 3]}, "field 'answers' holds a non-string answer"),
        ({"answers": ["the", "."]}, "no gold answer is left after normalisation"),
        ({"docs": []}, "field 'docs' is empty"),
        ({"docs": [GOLD, "text"]}, "doc 1 is a str, not an object"),
        ({"docs": [{"title": "T", "text": "", "score": 1}]}, "doc 0: field 'text' is empty"),
        ({"docs": [{"title": 5, "text": "x", "score": 1}]}, "doc 0: field 'title' is a int, not a string"),
        ({"docs": [{"title": "T", "text": "x"}]}, "doc 0: missing field 'score'"),
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
    assert validate_record(RawEntry(line=3, value=_record(id=None)))[::2] == ("line:3", "line 3: missing field 'id'")
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
        ("q2", "field 'docs' is empty"),
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
        ("q1", "field 'docs' is empty"),
        ("line:2", "line 2: duplicate id 'q1' (first at line 1)"),
        ("line:3", "line 3: duplicate id 'q1' (first at line 1)"),
    ]
    assert check_accounting("eval_records", ["q1", "line:2", "line:3"],
                            StageResult(kept=result.kept, rejects=result.rejects))["rejected"] == 3


def test_fixture_file_round_trip(tmp_path):
    summary = make_qa_fixture(tmp_path / "eval.jsonl", n_questions=12)
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


# ---------------------------------------------------------------------------------------------
# datasets: prompt kinds, metrics, settings per dataset

INFERENCE = {"settings": list(SETTINGS), "ndocs": 3}


def test_resolve_dataset_fills_defaults_from_the_global_settings():
    dataset = resolve_dataset({"name": "kilt_nq", "path": "nq.jsonl"}, INFERENCE)
    assert (dataset.prompt, dataset.metrics, dataset.settings, dataset.ndocs, dataset.labels) == (
        "question", ("exact_match", "accuracy"), tuple(SETTINGS), 3, None)
    assert dataset.record_labels is None  # no label_accuracy: answers need not be labels
    conflict = resolve_dataset({"name": "nq_conflict", "path": "c.jsonl", "ndocs": 1,
                                "settings": ["prefilled_1doc", "closed_book"]}, INFERENCE)
    assert (conflict.settings, conflict.ndocs) == (("prefilled_1doc", "closed_book"), 1)
    fever = resolve_dataset({"name": "kilt_fever", "path": "f.jsonl", "metrics": ["label_accuracy"]}, INFERENCE)
    assert set(fever.record_labels) == {"SUPPORTS", "REFUTES"} and fever.scoring.metrics == ("label_accuracy",)


def test_a_resolved_entry_stands_alone_and_an_unresolved_one_needs_defaults():
    entry = {"name": "kilt_nq", "path": "nq.jsonl", "settings": ["closed_book"]}
    resolved = resolved_entry(entry, INFERENCE)
    assert (resolved["settings"], resolved["ndocs"]) == (["closed_book"], 3)
    # a job given its set's resolved entry needs no global defaults, and gets the same dataset
    assert resolve_dataset(resolved) == resolve_dataset(entry, INFERENCE)
    with pytest.raises(ValueError, match="dataset 'kilt_nq' names no \\['ndocs'\\]"):
        resolve_dataset(entry)
    with pytest.raises(ValueError, match="dataset 'bad'.*unknown settings"):
        resolved_entry({"name": "bad", "settings": ["open_book"]}, INFERENCE)


def test_record_labels_only_for_label_accuracy_sets():
    assert record_labels({"name": "nq"}) is None
    assert set(record_labels({"metrics": ["label_accuracy"]})) == {"SUPPORTS", "REFUTES"}
    own = {"yes": ["true"], "no": ["false"]}
    assert record_labels({"metrics": ["label_accuracy", "exact_match"], "labels": own}) == own


def test_check_dataset_refuses_sentence_completion_beyond_one_prefilled_passage():
    entry = {"name": "based_squad", "path": "s.jsonl", "prompt": "sentence_completion"}
    # null settings take the global ones, which include settings a sentence cannot be finished in
    with pytest.raises(ValueError, match="dataset 'based_squad': the sentence_completion prompt .* "
                                         "prefilled_1doc only, not \\['prefilled_kdocs', 'closed_book', 'context_in_input'\\]"):
        check_dataset(entry, SETTINGS)
    with pytest.raises(ValueError, match="dataset 'based_swde'.*not \\['closed_book'\\]"):
        check_dataset({"name": "based_swde", "prompt": "sentence_completion_newline",
                       "settings": ["prefilled_1doc", "closed_book"]}, SETTINGS)
    assert check_dataset({**entry, "settings": ["prefilled_1doc"]}, SETTINGS) == ["prefilled_1doc"]
    # a question dataset may take every setting
    assert check_dataset({"name": "kilt_nq"}, SETTINGS) == list(SETTINGS)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"prompt": "cloze"}, "unknown prompt 'cloze'"),
        ({"settings": ["open_book"]}, "unknown settings \\['open_book'\\]"),
        ({"settings": []}, "no settings"),
        ({"settings": ["closed_book", "closed_book"]}, "named twice"),
        ({"ndocs": 0}, "ndocs must be an integer >= 1"),
        ({"metrics": ["bleu"]}, "must be distinct names"),
        ({"metrics": ["label_accuracy"], "labels": {"X": []}}, "needs a list of words"),
    ],
)
def test_check_dataset_names_the_dataset_and_the_problem(entry, message):
    with pytest.raises(ValueError, match=f"dataset 'ds': .*{message}"):
        check_dataset({"name": "ds", **entry}, SETTINGS)


def test_sentence_completion_prompts_are_the_originals_layout_with_our_instruction():
    instruction = load_instruction("sentence_completion")
    assert instruction.source == "cings/sentence_completion" and instruction.version.startswith("sentence_completion-")
    assert "finish the sentence" in instruction.text
    assert load_instruction("question") is None
    record = _clean(question=" The capital of France is ", docs=[{"title": "", "text": "Paris is the capital of France",
                                                                  "score": "gold"}])
    parts = build_prompt(record, "prefilled_1doc", ndocs=5, system_prompt=SYSTEM_PROMPT, prompt="sentence_completion",
                         instruction=instruction.text)
    assert parts.messages == ({"role": "system", "content": SYSTEM_PROMPT},
                              {"role": "user", "content": instruction.text.strip()})
    assert parts.assistant_prefix == "## Context Paris is the capital of France. The capital of France is ## Answer"
    newline = build_prompt(record, "prefilled_1doc", ndocs=5, system_prompt="", prompt="sentence_completion_newline",
                           instruction="Finish it.")
    assert newline.messages == ({"role": "user", "content": "Finish it."},)
    assert newline.assistant_prefix == "## Context Paris is the capital of France\nThe capital of France is ## Answer"
    # a titled passage is shown as everywhere else, `{title} {text}`; the longest gold one
    titled = build_prompt(_clean(question="It is"), "prefilled_1doc", ndocs=5, system_prompt="",
                          prompt="sentence_completion", instruction="Finish it.")
    assert titled.assistant_prefix == "## Context France Paris is the capital of France.. It is ## Answer"
    with pytest.raises(ValueError, match="prefilled_1doc only, not 'closed_book'"):
        build_prompt(record, "closed_book", ndocs=1, system_prompt="", prompt="sentence_completion", instruction="x")
    with pytest.raises(ValueError, match="needs its instruction"):
        build_prompt(record, "prefilled_1doc", ndocs=1, system_prompt="", prompt="sentence_completion")


def test_a_users_instruction_file_replaces_ours(tmp_path):
    mine = tmp_path / "finish.txt"
    mine.write_text("Complete the sentence using the previous context.\n")
    loaded = load_instruction("sentence_completion_newline", str(mine))
    assert loaded.text.strip() == "Complete the sentence using the previous context." and loaded.source == str(mine)
    assert loaded.version != load_instruction("sentence_completion_newline").version
    (tmp_path / "fields.txt").write_text("Finish {question}")
    with pytest.raises(ValueError, match="asks for unknown field"):
        load_instruction("sentence_completion", str(tmp_path / "fields.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        load_instruction("sentence_completion", str(tmp_path / "empty.txt"))


def test_label_datasets_reject_records_whose_gold_is_no_label():
    entries = [RawEntry(1, _record(answers=["SUPPORTS"])), RawEntry(2, _record(id="q2", answers=["Maybe"])),
               RawEntry(3, _record(id="q3", answers=["supports", "refutes"]))]
    result = validate_records(entries, labels={"SUPPORTS": ["yes"], "REFUTES": ["no"]})
    assert list(result.kept["id"]) == ["q1"]
    assert [r.split(" name")[1][:8] for r in result.rejects["reason"]] == [" no labe", " several"]
    assert validate_records(entries).counts["out"] == 3  # without labels any answer is a short answer


# ---------------------------------------------------------------------------------------------
# one job per dataset x mode: requests are records x settings


def test_requests_are_records_times_settings_with_their_own_ids():
    records = pd.DataFrame([_clean(), _clean(id="a|b")])
    requests = setting_requests(records, ["closed_book", "prefilled_1doc"])
    assert list(requests["id"]) == ["q1|closed_book", "a|b|closed_book", "q1|prefilled_1doc", "a|b|prefilled_1doc"]
    assert list(requests["record_id"]) == ["q1", "a|b", "q1", "a|b"]
    assert split_request_id("a|b|closed_book") == ("a|b", "closed_book")
    with pytest.raises(ValueError, match="not a request id"):
        split_request_id("q1|open_book")
    with pytest.raises(ValueError, match="at least one of"):
        setting_requests(records, ["open_book"])


def test_a_record_rejected_in_one_setting_and_kept_in_another_adds_up():
    # q2 has only a gold passage; with gold passages excluded it has none to show (rejected in the
    # passage settings) but is answered closed-book
    records = pd.DataFrame([_clean(), _clean(id="q2", docs=[GOLD])])
    requests = setting_requests(records, ["prefilled_1doc", "closed_book", "context_in_input"])
    generator = EchoGenerator()
    result = infer_requests(requests, generator, SamplingParams(max_new_tokens=4), ndocs=2, use_gold=False,
                            system_prompt=SYSTEM_PROMPT)
    assert len(generator.calls) == 1 and len(generator.calls[0][0]) == 4  # one batched call for every setting
    assert list(result.kept["id"]) == ["q1|prefilled_1doc", "q1|closed_book", "q2|closed_book", "q1|context_in_input"]
    assert list(result.kept["record_id"]) == ["q1", "q1", "q2", "q1"]
    assert list(result.rejects["id"]) == ["q2|prefilled_1doc", "q2|context_in_input"]
    counts = check_accounting("infer", requests["id"], result)
    assert (counts["in"], counts["out"], counts["rejected"]) == (6, 4, 2)
    per_setting = setting_counts(["prefilled_1doc", "closed_book", "context_in_input"], result.kept["id"],
                                 result.rejects["id"], 6)
    assert per_setting.values.tolist() == [["prefilled_1doc", 1, 1], ["closed_book", 2, 0], ["context_in_input", 1, 1]]


def test_a_prompt_that_cannot_take_a_setting_stops_the_job_instead_of_rejecting_records():
    requests = setting_requests(pd.DataFrame([_clean()]), ["prefilled_1doc", "closed_book"])
    with pytest.raises(ValueError, match="prefilled_1doc only, not 'closed_book'"):
        infer_requests(requests, EchoGenerator(), SamplingParams(max_new_tokens=4), ndocs=1, system_prompt="",
                       prompt="sentence_completion", instruction="Finish it.")


def test_setting_counts_and_job_runs_check_the_jobs_accounting():
    with pytest.raises(ValueError, match="closed_book: 1 answered \\+ 0 rejected != 2 records"):
        setting_counts(["prefilled_1doc", "closed_book"], ["q1|prefilled_1doc", "q2|prefilled_1doc", "q1|closed_book"],
                       [], 4)
    with pytest.raises(ValueError, match="not among the job's settings"):
        setting_counts(["closed_book"], ["q1|prefilled_1doc"], [], 1)
    dataset = resolve_dataset({"name": "nq", "settings": ["prefilled_1doc", "closed_book"]}, INFERENCE)
    predictions = pd.DataFrame({"id": ["q1|prefilled_1doc", "q1|closed_book", "q2|closed_book"]})
    rejects = pd.DataFrame({"id": ["q2|prefilled_1doc"]})
    runs = job_runs(dataset, "context", predictions, rejects, {"in": 4, "out": 3, "rejected": 1})
    assert runs.values.tolist() == [["nq", "context", "prefilled_1doc", 1, 1], ["nq", "context", "closed_book", 2, 0]]
    with pytest.raises(ValueError, match="counts say out=2"):
        job_runs(dataset, "context", predictions, rejects, {"in": 4, "out": 2, "rejected": 1})


def test_infer_setting_keeps_its_record_ids():
    records = pd.DataFrame([_clean(), _clean(id="q2", docs=[GOLD])])
    result = infer_setting(records, EchoGenerator(), SamplingParams(max_new_tokens=4), "prefilled_1doc", ndocs=1,
                           use_gold=False, system_prompt=SYSTEM_PROMPT)
    assert list(result.kept.columns) == ["id", "setting", "question", "answers", "n_docs", "doc_titles",
                                         "generation", "prediction"]
    assert list(result.kept["id"]) == ["q1"] and list(result.rejects["id"]) == ["q2"]


# ---------------------------------------------------------------------------------------------
# the demo's files, one per kind


def test_eval_fixture_writes_one_file_per_kind_with_its_bad_records(tmp_path):
    summary = make_eval_fixture(tmp_path)
    assert list(summary) == list(EVAL_KINDS)
    for entry in fixture_datasets(tmp_path):
        kind = entry["name"]
        dataset = resolve_dataset(entry, INFERENCE)  # every kind's config entry is a valid one
        result = read_eval_records(dataset.path, name=dataset.name, labels=dataset.record_labels)
        assert result.counts["out"] == summary[kind]["valid"] == len(kind_records(kind))
        assert result.counts["rejected"] == summary[kind]["bad"] == len(BAD_BY_KIND[kind])
        reasons = list(result.rejects["reason"])
        assert all(sum(expected in r for r in reasons) == 1 for expected, _ in BAD_BY_KIND[kind]), (kind, reasons)
    make_eval_fixture(tmp_path / "again")  # the same files for the same arguments
    for kind in EVAL_KINDS:
        assert (tmp_path / f"{kind}.jsonl").read_bytes() == (tmp_path / "again" / f"{kind}.jsonl").read_bytes()
    only = make_eval_fixture(tmp_path / "two", kinds=["based_swde", "nq_conflict"], include_bad=False)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["based_swde.jsonl", "nq_conflict.jsonl"]
    assert only["nq_conflict"]["bad"] == 0


def test_eval_fixture_kinds_are_what_their_sets_need():
    fever = kind_records("kilt_fever")
    assert {r["answers"][0] for r in fever} == {"SUPPORTS", "REFUTES"}
    assert all(r["docs"][0]["score"] == "gold" and len(r["docs"]) == 4 for r in fever)
    # knowledge conflict: the one passage holds the (counterfactual) answer, which is not the world's
    world = {question: answers for _, question, answers, _, _ in FACTS}
    for record in kind_records("nq_conflict"):
        assert len(record["docs"]) == 1 and record["answers"][0] in record["docs"][0]["text"]
        assert not set(record["answers"]) & set(world.get(record["question"], []))
        assert record["question"] in world
    # sentence completion: the passage holds the words that finish the sentence
    for kind in ("based_squad", "based_swde"):
        assert FIXTURE_DATASETS[kind]["settings"] == ["prefilled_1doc"]
        for record in kind_records(kind):
            assert record["answers"][0] in record["docs"][0]["text"]
    assert all("\n" in r["docs"][0]["text"] for r in kind_records("based_swde"))
    assert FIXTURE_DATASETS["kilt_eli5"]["metrics"] == ["rouge_l"]
    with pytest.raises(ValueError, match="unknown evaluation fixture kind"):
        kind_records("kilt_nq")
