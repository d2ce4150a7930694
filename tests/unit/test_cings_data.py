"""CINGS data: Self-RAG parsing, the marker form, the per-mode assistant text, record accounting."""
import json

import pytest

from groundflow.cings.data import (
    RecordError,
    assistant_text,
    context_blocks,
    convert_lines,
    convert_markers,
    convert_record,
    parse_marker_output,
    parse_selfrag_output,
    read_source_records,
    to_marker_output,
    training_conversation,
    user_text,
)
from groundflow.cings.fixture import make_selfrag_fixture
from groundflow.io.lines import read_json_lines

P1 = "Danube\nThe Danube flows into the Black Sea."
P2 = "Saturn\nSaturn has rings."
TWO_PASSAGES = (
    f"[Retrieval]<paragraph>{P1}</paragraph>[Relevant]It flows into the Black Sea.[Fully supported]"
    "[Continue to Use Evidence]It is  long."
    f"[Retrieval]<paragraph>{P2}</paragraph>[Relevant]Saturn  has rings.[Partially supported][Utility:4]"
)


def test_two_passages_parse_into_segments_with_reflection_tokens_dropped():
    parsed = parse_selfrag_output(TWO_PASSAGES)
    assert parsed.prefix == ""
    assert [(s.passage, s.answer) for s in parsed.segments] == [
        (P1, "It flows into the Black Sea. It is long."),
        (P2, "Saturn has rings."),
    ]
    assert to_marker_output(parsed) == (
        f"[Ex] {P1} [Cs] It flows into the Black Sea. It is long. [Ce] [Ex] {P2} [Cs] Saturn has rings. [Ce]"
    )


def test_modes_give_the_spec_layout_and_no_context_survives_several_passages():
    markers = to_marker_output(parse_selfrag_output("Intro  text. " + TWO_PASSAGES))
    expected_context = (
        f"Intro text. ## Context {P1} ## Answer It flows into the Black Sea. It is long. "
        f"## Context {P2} ## Answer Saturn has rings."
    )
    assert assistant_text(markers, "context") == expected_context
    assert assistant_text(markers, "no_mask") == expected_context
    # The original raised ValueError on a second [Ex] and glued words separated by two spaces.
    assert assistant_text(markers, "no_context") == "Intro text. It flows into the Black Sea. It is long. Saturn has rings."
    with pytest.raises(ValueError, match="unknown CINGS mode"):
        assistant_text(markers, "context_with_sp")


def test_convert_markers_collapses_spaces_instead_of_deleting_them():
    assert convert_markers("[Ex] p [Cs] two  words [Ce]", remove_context=True) == "two words"
    assert convert_markers("[Ex] p  q [Cs] a [Ce]", remove_context=False) == "## Context p q ## Answer a"


def test_context_blocks_are_the_text_strictly_between_the_markers():
    text = "Pre ## Context alpha beta ## Answer gamma ## Context delta ## Answer eps"
    assert [text[s:e] for s, e in context_blocks(text)] == [" alpha beta ", " delta "]


@pytest.mark.parametrize(
    "output, reason",
    [
        ("[No Retrieval]Hello.[Utility:5]", "no retrieved passage ([No Retrieval])"),
        (f"[Retrieval]<paragraph>{P1}</paragraph>[Irrelevant]x[Utility:1]", "passage 1 is judged [Irrelevant]"),
        (f"[Retrieval]<paragraph>{P1}[Relevant]x", "passage 1 has an unclosed <paragraph>"),
        (f"[Retrieval]<paragraph>{P1}</paragraph>x", "passage 1 has no relevance judgement"),
        ("[Retrieval]<paragraph> </paragraph>[Relevant]x", "passage 1 is empty"),
        (f"[Retrieval]<paragraph>{P1}</paragraph>[Relevant][Fully supported][Utility:5]", "passage 1 is followed by no answer text"),
        ("[Retrieval]<paragraph>a ## Answer b</paragraph>[Relevant]x", "passage 1 contains the marker '## Answer'"),
        ("text</paragraph>", "</paragraph> without <paragraph>"),
        ("   ", "empty output"),
    ],
)
def test_bad_selfrag_outputs_name_their_reason(output, reason):
    with pytest.raises(RecordError) as error:
        parse_selfrag_output(output)
    assert str(error.value) == reason


def test_no_retrieval_records_are_kept_when_asked():
    parsed = parse_selfrag_output("[No Retrieval]Hello  there.[Utility:5]", keep_no_retrieval=True)
    assert parsed.n_passages == 0 and parsed.prefix == "Hello there."
    assert assistant_text(to_marker_output(parsed), "context") == "Hello there."


def test_marker_form_round_trips_and_checks_its_order():
    markers = to_marker_output(parse_selfrag_output(TWO_PASSAGES))
    assert to_marker_output(parse_marker_output(markers)) == markers
    with pytest.raises(RecordError, match="markers out of order"):
        parse_marker_output("[Cs] a [Ex] b")


def test_records_user_turn_variant_and_filtered_input():
    record = {"id": "r1", "instruction": " Answer it. ", "input": "Which sea?", "output": TWO_PASSAGES, "dataset_name": "nq"}
    converted = convert_record(record, record_id="r1")
    assert converted.input == "Answer it.\n\nWhich sea?" == user_text("Answer it.", "Which sea?")
    assert converted.n_passages == 2 and converted.source_format == "selfrag"
    with pytest.raises(RecordError, match="2 passages; the single variant keeps exactly one"):
        convert_record(record, record_id="r1", variant="single")
    filtered = convert_record({"input": "Which sea?", "output": converted.output}, record_id="f1")
    assert (filtered.output, filtered.source_format) == (converted.output, "markers")
    conversation = training_conversation(converted.as_dict(), "context", "Be brief.")
    assert [t["from"] for t in conversation] == ["system", "human", "gpt"]
    assert conversation[2]["value"].startswith("## Context Danube")


@pytest.mark.parametrize("record, reason", [
    ({"input": "", "output": TWO_PASSAGES}, "missing field 'instruction'"),  # a Self-RAG record that lost it
    ({"output": TWO_PASSAGES}, "missing field 'instruction'"),
    ({"instruction": "  ", "input": "", "output": TWO_PASSAGES}, "field 'instruction' is empty"),
    ({"instruction": "Q?", "input": 3, "output": TWO_PASSAGES}, "field 'input' is a int, not a string"),
    ({"instruction": "Q?"}, "missing field 'output'"),
    ({"instruction": "Q?", "output": ["A."]}, "field 'output' is a list, not a string"),
    ({"input": "Which sea?", "output": " "}, "field 'output' is empty"),
])
def test_a_reject_names_the_field_that_is_wrong(record, reason):
    with pytest.raises(RecordError) as error:
        convert_record(record, record_id="r1")
    assert str(error.value) == reason


def test_every_line_is_kept_or_rejected_once(tmp_path):
    good = {"id": "a", "instruction": "Q?", "output": f"[Retrieval]<paragraph>{P1}</paragraph>[Relevant]A.[Utility:5]"}
    lines = [
        json.dumps(good),
        "",
        json.dumps(good),  # duplicate id
        "{not json",
        json.dumps({"instruction": "Q?", "output": "[No Retrieval]A."}),  # no id: named by its line
        json.dumps(["a list"]),
    ]
    kept, rejects, count = convert_lines(lines)
    assert count == 5 and [r.id for r in kept] == ["a"]
    assert rejects == [
        ("line:3", "line 3: duplicate id 'a'"),
        ("line:4", "line 4 is not valid JSON (Expecting property name enclosed in double quotes)"),
        ("line:5", "record line:5: no retrieved passage ([No Retrieval])"),
        ("line:6", "record line:6: not a JSON object but list"),
    ]


def test_source_ids_are_fixed_before_conversion_and_name_unreadable_lines():
    """The convert stage's accounting is checked against these ids, which do not depend on
    whether a record converts: a record that converts badly is still accounted for under its id."""
    good = {"id": "a", "instruction": "Q?", "output": f"[Retrieval]<paragraph>{P1}</paragraph>[Relevant]A.[Utility:5]"}
    lines = [json.dumps(good), "   ", json.dumps({**good, "id": "b", "output": ""}), json.dumps(good), "[1,", json.dumps({"id": 7, "x": 1})]
    sources = read_source_records(read_json_lines("\n".join(lines).encode()))
    assert [(s.id, s.line) for s in sources] == [("a", 1), ("b", 3), ("line:4", 4), ("line:5", 5), ("7", 6)]
    assert [s.error is None for s in sources] == [True, True, False, False, True]
    kept, rejects, count = convert_lines(lines)
    assert {r.id for r in kept} | {i for i, _ in rejects} == {s.id for s in sources} and count == len(sources)
    assert dict(rejects)["b"] == "record b: field 'output' is empty"


def test_fixture_bad_lines_are_rejected_with_the_expected_reasons(tmp_path):
    summary = make_selfrag_fixture(tmp_path, seed=0, n_records=12)
    kept, rejects, count = convert_lines((tmp_path / "selfrag.jsonl").read_text().splitlines())
    assert count == summary["n_lines"] == len(kept) + len(rejects)
    assert len(kept) == summary["n_good"] == 12
    reasons = dict(rejects)
    assert len(rejects) == len(summary["bad_cases"])
    for case in summary["bad_cases"]:
        assert case["reason"] in reasons[case["id"]], case
    assert {r.n_passages for r in kept} == {1, 2, 3}
    make_selfrag_fixture(tmp_path / "again", seed=0, n_records=12)
    assert (tmp_path / "selfrag.jsonl").read_bytes() == (tmp_path / "again" / "selfrag.jsonl").read_bytes()
