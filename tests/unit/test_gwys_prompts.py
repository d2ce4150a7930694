"""GWYS prompts: one question prompt per form, the per-type instruction, the judge's request."""

import pytest

from groundflow.gwys.prompts import (PROBLEM_TYPES, format_question, load_caption_judge_prompts,
                                     load_question_prompts, split_option)


def test_each_form_asks_for_its_own_tags():
    four = load_question_prompts("four_tag").user_text("Q?")
    two = load_question_prompts("think_answer").user_text("Q?")
    assert four.startswith("Q?\n") and two.startswith("Q?\n")
    for tag in ("<prethink>", "<caption>", "<think>", "<answer>"):
        assert tag in four
    assert "<prethink>" not in two and "<caption>" not in two and "<think>" in two and "<answer>" in two
    with pytest.raises(ValueError, match="output form"):
        load_question_prompts("three_tag")


def test_rl_and_eval_add_the_type_instruction_sft_does_not():
    prompts = load_question_prompts("four_tag")
    sft = prompts.user_text("Which?\nOptions:\nA. x\nB. y")
    rl = prompts.user_text("Which?\nOptions:\nA. x\nB. y", "multiple choice")
    assert rl.startswith(sft + "\n") and "letter" in rl[len(sft):]
    assert "number" in prompts.user_text("How many?", "numerical")[len(prompts.user_text("How many?")):]
    assert set(prompts.type_instructions) == set(PROBLEM_TYPES)
    with pytest.raises(ValueError, match="no instruction"):
        prompts.user_text("Q?", "essay")


def test_questions_and_options():
    assert format_question(" Which? ", ["A. x", "B. y "]) == "Which?\nOptions:\nA. x\nB. y"
    assert format_question("How many?") == "How many?"
    assert split_option("B. a red cube") == ("B", "a red cube")
    assert split_option("(C) blue") == ("C", "blue") and split_option("red") is None


def test_a_user_prompt_file_must_hold_the_question_field(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("Answer this: {question}")
    assert load_question_prompts("four_tag", str(mine)).user_text("Q?") == "Answer this: Q?"
    mine.write_text("Answer this.")
    with pytest.raises(ValueError, match="lacks the field"):
        load_question_prompts("four_tag", str(mine))


def test_judge_request_carries_caption_question_and_type_instruction():
    prompts = load_caption_judge_prompts()
    request = prompts.request("two red cubes", "How many cubes?", "numerical")
    system, user = request.messages
    assert system["content"] == "You are a helpful assistant."
    assert "two red cubes" in user["content"] and "How many cubes?" in user["content"]
    assert user["content"].endswith(prompts.type_instructions["numerical"].text.strip())
    assert request.image is None
