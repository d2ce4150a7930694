"""TSST warm-up data: the README's linear rule (step k of N gets k/N, incorrect chains 0), prefixes
cut by our sentence splitter and joined by one space, the policy/value LLaVA records, and rejects."""

import json

import pytest

from groundflow.tsst.prompts import load_question_prompts
from groundflow.tsst.questions import parse_jsonl_bytes
from groundflow.tsst.warmup import chain_prefixes, linear_values, warmup_from_lines

PROMPTS = load_question_prompts()
# four sentences by our splitter; the original's '.' cut would make nine pieces of it
CHAIN = ("Here is the step-by-step reasoning process:\n\nStep 1: The jug holds 3.5 litres, e.g. a large one. "
         "Step 2: The cup holds 0.25 litres.  Step 3: So the jug holds more. Final Answer: B. the jug")


def test_linear_rule_on_a_four_step_chain():
    assert linear_values(4, True) == [0.25, 0.5, 0.75, 1.0]
    assert linear_values(4, False) == [0.0, 0.0, 0.0, 0.0]
    assert linear_values(1, True) == [1.0]
    with pytest.raises(ValueError):
        linear_values(0, True)


def test_prefixes_are_whole_sentences_joined_by_one_space():
    prefixes = chain_prefixes(CHAIN)
    assert len(prefixes) == 4
    assert prefixes[0].endswith("3.5 litres, e.g. a large one.")
    assert prefixes[1].endswith("one. Step 2: The cup holds 0.25 litres.")
    assert prefixes[2] == prefixes[1] + " Step 3: So the jug holds more."  # the double space is gone
    assert prefixes[3] == prefixes[2] + " Final Answer: B. the jug"
    assert len(chain_prefixes(CHAIN, cut="period")) == 9  # the original's cut, kept as an option


def _cot(i, **over):
    record = {"id": f"c{i}", "image": None, "question": "Which holds more?", "choices": ["the cup", "the jug"],
              "answer_label": 2, "solution": CHAIN, "correct": True}
    record.update(over)
    return json.dumps(record).encode()


def test_value_and_policy_records(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    lines = parse_jsonl_bytes(b"\n".join([_cot(0, image="a.png"), _cot(1, correct=False), _cot(2)]))
    data = warmup_from_lines(lines, image_root=tmp_path, prompts=PROMPTS)
    by_chain = {}
    for record in data.value:
        by_chain.setdefault(record["id"].rsplit(":", 1)[0], []).append(record)
    assert [r["value"] for r in by_chain["c0"]] == [0.25, 0.5, 0.75, 1.0]
    assert [r["value"] for r in by_chain["c1"]] == [0.0, 0.0, 0.0, 0.0]
    assert [r["id"] for r in by_chain["c0"]] == ["c0:1", "c0:2", "c0:3", "c0:4"]
    assert [r["conversations"][1]["value"] for r in by_chain["c0"]] == chain_prefixes(CHAIN)
    # only correct chains train the policy; its answer is spaced as the search spaces chains
    assert [r["id"] for r in data.policy] == ["c0", "c2"]
    assert data.policy[0]["conversations"][1]["value"] == chain_prefixes(CHAIN)[-1]
    with_image, text_only = data.policy
    assert with_image["image"] == "a.png"
    assert with_image["conversations"][0]["value"].startswith("<image>\nGiven the image")
    assert "image" not in text_only and "<image>" not in text_only["conversations"][0]["value"]
    assert "A. the cup\nB. the jug" in text_only["conversations"][0]["value"]
    assert data.counts["in"] == 3 == data.counts["out"]
    assert (data.counts["correct_chains"], data.counts["incorrect_chains"]) == (2, 1)
    assert data.counts["value_records"] == 12 and data.counts["policy_records"] == 2


def test_bad_cot_records_are_rejected_with_reasons(tmp_path):
    lines = parse_jsonl_bytes(b"\n".join([
        _cot(0),
        b'{"id": "c1", "solution": "Step 1',
        b'{"id": "c2\xff"}',
        _cot(3, correct="yes"),
        _cot(4, solution="   "),
        _cot(5, choices=[]),
        _cot(6, answer_label=3),
        _cot(7, image="gone.png"),
        _cot(0),
        json.dumps({"question": "q"}).encode(),
    ]))
    data = warmup_from_lines(lines, image_root=tmp_path, prompts=PROMPTS)
    reasons = dict(zip(data.rejects["id"], data.rejects["reason"]))
    assert "is not valid JSON" in reasons["line:2"]
    assert "is not UTF-8" in reasons["line:3"]
    assert "'correct' is 'yes', not true or false" in reasons["c3"]
    assert "field 'solution' is empty" in reasons["c4"]
    assert "empty choices" in reasons["c5"]
    assert "answer_label 3 out of range 1..2" in reasons["c6"]
    assert "missing image file gone.png" in reasons["c7"]
    assert "duplicate id 'c0'" in reasons["line:9"]
    assert "missing field 'id'" in reasons["line:10"]
    assert [r["id"] for r in data.policy] == ["c0"]
    assert data.counts["in"] == 10 and data.counts["out"] == 1 and data.counts["rejected"] == 9
