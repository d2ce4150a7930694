"""The pure scoring helpers of groundflow's lmms-eval tasks and the harness's record checks."""

from __future__ import annotations

import json

import pytest

from groundflow.evaluate.harness import read_task_records
from groundflow.evaluate.tasks.task_utils import (
    YES_NO_METRICS,
    multiple_choice_prompt,
    multiple_choice_result,
    option_letters,
    read_choice_letter,
    yes_no_result,
)


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("(C)", "C"), ("A.", "A"), ("B) a cat", "B"),
    ("The answer is C.", "C"), ("Answer: a", "A"), ("I think A, but the answer is B", "B"),
    ("a cat on a mat", None),  # the article is not option A
    ("D", None),  # beyond the three options
    ("", None), ("I cannot tell", None),
])
def test_read_choice_letter(text, letter):
    assert read_choice_letter(text, 3) == letter


def test_option_letters_bounds():
    assert option_letters(4) == "ABCD"
    with pytest.raises(ValueError, match="2..26"):
        option_letters(1)
    with pytest.raises(ValueError, match="2..26"):
        option_letters(27)


def test_multiple_choice_prompt_and_result():
    prompt = multiple_choice_prompt(" What is it? ", ["cat", "dog"], "\nPick one.")
    assert prompt == "What is it?\nA. cat\nB. dog\nPick one."
    assert multiple_choice_result("B", "b", 2) == {"mc_accuracy": 1.0, "mc_answered": 1.0}
    assert multiple_choice_result("A", "B", 2) == {"mc_accuracy": 0.0, "mc_answered": 1.0}
    assert multiple_choice_result("no idea", "B", 2) == {"mc_accuracy": 0.0, "mc_answered": 0.0}


def test_yes_no_result_reads_pope_answers():
    right = yes_no_result(7, "No, there is not.", "No")
    assert set(right) == set(YES_NO_METRICS)
    assert right["pope_accuracy"] == {"question_id": 7, "score": 1.0, "prediction": "no", "ground_truth": "no"}
    wrong = yes_no_result(8, "Yes there is a cat", "no")
    assert wrong["pope_f1_score"]["prediction"] == "yes" and wrong["pope_f1_score"]["score"] == 0.0
    with pytest.raises(ValueError, match="question 9"):
        yes_no_result(9, "yes", "maybe")


def _write(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_read_task_records_rejects_bad_records_and_keeps_the_good(tmp_path):
    (tmp_path / "img.png").write_bytes(b"not read here")
    good = {"question_id": 1, "image": "img.png", "question": "Is there a cat?", "answer": "yes"}
    records, rejects = read_task_records("groundflow_yes_no", _write(tmp_path / "ok.jsonl", [good]))
    assert records == [{**good, "image": str((tmp_path / "img.png").resolve())}]
    assert rejects == []

    path = _write(tmp_path / "mixed.jsonl", [
        good,
        {"question_id": 2, "image": "img.png", "question": "q"},
        {**good, "question_id": 3, "image": "gone.png"},
        {**good, "question_id": 4, "answer": "maybe"},
        [1, 2],
        {**good, "question_id": 6},
    ])
    with path.open("a", encoding="utf-8") as file:
        file.write("{not json\n")
    records, rejects = read_task_records("groundflow_yes_no", path)
    assert [record["question_id"] for record in records] == [1, 6]
    assert [(reject["question_id"], reject["line"]) for reject in rejects] == [(2, 2), (3, 3), (4, 4), (None, 5), (None, 7)]
    assert all(reject["file"] == str(path) for reject in rejects)
    reasons = [reject["reason"] for reject in rejects]
    assert reasons[0] == "missing field(s) ['answer']"
    assert reasons[1].startswith("image not found: ") and reasons[1].endswith("gone.png")
    assert reasons[2] == "answer must be 'yes' or 'no', got 'maybe'"
    assert reasons[3] == "not a JSON object"
    assert "line 7 is not valid JSON" in reasons[4]

    mc = {"question_id": 3, "image": "img.png", "question": "Which?", "options": ["a", "b"], "answer": "B"}
    records, rejects = read_task_records("groundflow_multiple_choice", _write(tmp_path / "mc.jsonl", [
        mc, {**mc, "question_id": 4, "answer": "C"}, {**mc, "question_id": 5, "options": ["a"]},
        {**mc, "question_id": 6, "options": "a b"}]))
    assert [record["question_id"] for record in records] == [3]
    assert [reject["reason"] for reject in rejects] == [
        "answer 'C' is not one of the option letters AB", "a multiple-choice item needs 2..26 options, got 1",
        "options must be a list of strings"]


def test_read_task_records_raises_for_a_file_without_good_records(tmp_path):
    with pytest.raises(ValueError, match=r"empty.jsonl: no usable records$"):
        read_task_records("groundflow_yes_no", _write(tmp_path / "empty.jsonl", []))
    bad = _write(tmp_path / "bad.jsonl", [{"question_id": 1, "image": "gone.png", "question": "q", "answer": "no"}])
    with pytest.raises(ValueError, match=r"bad.jsonl: no usable records; 1 rejected, the first: line 1: image not found"):
        read_task_records("groundflow_yes_no", bad)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question_id": 1,', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.json: cannot be read as groundflow_yes_no records"):
        read_task_records("groundflow_yes_no", broken)


def test_harness_module_stays_light():
    import subprocess
    import sys

    code = ("import sys, groundflow.evaluate.harness, groundflow.evaluate.tasks.task_utils; "
            "print([m for m in ('torch', 'transformers', 'lmms_eval') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_judge_environment_gives_each_task_its_url_form(monkeypatch):
    from groundflow.evaluate.harness import JudgeError, judge_environment

    monkeypatch.setenv("EVAL_JUDGE_API_KEY", "sk-secret")
    judge = {"base_url": "http://judge:8000/v1/", "served_model": "gpt-4-0613", "api_key_env": "EVAL_JUDGE_API_KEY"}
    # MM-Vet's judge is an openai client given the base URL; MMBench's matcher posts to the full URL
    assert judge_environment("groundflow_mmvet", judge) == {
        "API_TYPE": "openai", "OPENAI_API_URL": "http://judge:8000/v1", "OPENAI_API_KEY": "sk-secret",
        "MODEL_VERSION": "gpt-4-0613"}
    assert judge_environment("groundflow_mmbench_en_dev", judge)["OPENAI_API_URL"] == \
        "http://judge:8000/v1/chat/completions"
    with pytest.raises(ValueError, match=r"missing or empty: \['served_model'\]"):
        judge_environment("groundflow_mmvet", {**judge, "served_model": ""})
    with pytest.raises(ValueError, match="backend must be 'openai'"):
        judge_environment("groundflow_mmvet", {**judge, "backend": "hf"})
    monkeypatch.setenv("EVAL_JUDGE_API_KEY", "")
    with pytest.raises(JudgeError, match="EVAL_JUDGE_API_KEY, which is not set or empty"):
        judge_environment("groundflow_mmvet", judge)
