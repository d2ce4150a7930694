import pytest

from groundflow.tsst.prompts import format_options, load_question_prompts, option_letter


def test_options_are_lettered_lines():
    assert format_options(["red", "blue", "a 3.5 cm square"]) == "A. red\nB. blue\nC. a 3.5 cm square"
    with pytest.raises(ValueError, match="at least one choice"):
        format_options([])


def test_option_letter_is_one_based():
    assert (option_letter(1), option_letter(4)) == ("A", "D")
    for bad in (0, 27, True, "2"):
        with pytest.raises(ValueError, match="answer label"):
            option_letter(bad)


def test_a_question_without_an_image_is_asked_without_one():
    prompts = load_question_prompts()
    with_image = prompts.human_turn("Which shape is red?", ["circle", "square"], has_image=True)
    text_only = prompts.human_turn("Which is larger, 2 or 3.5?", ["2", "3.5"], has_image=False)
    assert with_image.startswith("<image>\nGiven the image") and "A. circle\nB. square" in with_image
    assert "<image>" not in text_only and "image" not in text_only.lower()
    assert "Which is larger, 2 or 3.5?" in text_only and text_only.rstrip().endswith("B. 3.5")
    assert prompts.version.count("-") >= 2  # both files' versions


def test_a_swapped_prompt_must_fill_both_fields(tmp_path):
    bad = tmp_path / "mine.txt"
    bad.write_text("Q: {question}\n")
    with pytest.raises(ValueError, match="lacks the field"):
        load_question_prompts(with_image=str(bad))
