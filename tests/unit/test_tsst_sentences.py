import pytest

from groundflow.tsst.sentences import first_sentence, join_sentences, split_sentences

CHAIN = ("Here is the step-by-step reasoning process: Step 1: The bar is 3.5 cm long, e.g. longer than the key. "
         "Step 2: Mr. Lee owns it! Step 3: So the answer is the bar... or the key? Final Answer: A. the bar")


def test_split_keeps_decimals_abbreviations_initials_and_ellipses_inside():
    assert split_sentences(CHAIN) == [
        "Here is the step-by-step reasoning process: Step 1: The bar is 3.5 cm long, e.g. longer than the key.",
        "Step 2: Mr. Lee owns it!",
        "Step 3: So the answer is the bar... or the key?",
        "Final Answer: A. the bar",
    ]
    assert join_sentences(split_sentences(CHAIN)) == CHAIN


def test_the_original_period_cut_is_available():
    assert split_sentences("It is 3.5 cm. Final Answer: A. red", cut="period") == ["It is 3.", "5 cm.", "Final Answer: A.", "red."]
    with pytest.raises(ValueError, match="cut must be"):
        split_sentences("x", cut="comma")


def test_first_sentence_waits_for_what_follows_a_period_while_generating():
    assert first_sentence(" The bar is 3.", finished=False) is None  # "3.5" may follow
    assert first_sentence(" The bar is 3.5 cm. It", finished=False) == "The bar is 3.5 cm."
    assert first_sentence(" The bar is 3.5 cm.", finished=True) == "The bar is 3.5 cm."
    assert first_sentence("Final Answer: B. blue", finished=False) is None
    assert first_sentence("Final Answer: B. blue", finished=True) == "Final Answer: B. blue"
    assert first_sentence("   ", finished=True) is None
    assert first_sentence("It is 3.5", finished=False, cut="period") == "It is 3."
