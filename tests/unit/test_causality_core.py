import math

import pytest
from transformers import AutoTokenizer

from groundflow.cvc.causality import in_causality_window, label_as_written, mention_texts, window_reason
from groundflow.generate.spans import SpanText, mask_positions, perplexity, span_token_positions
from groundflow.models.tokenizers import build_tokenizer


def test_mention_texts_masks_full_form_and_substitutes_label():
    full, label = mention_texts("A man rows long oars on a boat.", "long oars", "oars")
    assert full == SpanText("A man rows long oars on a boat.", 11, 20)
    assert label == SpanText("A man rows oars on a boat.", 11, 15)
    assert label.text[label.start : label.end] == "oars"


def test_mention_texts_uses_first_occurrence_case_insensitively():
    full, label = mention_texts("The Dog sees another dog.", "dog", "dog")
    assert (full.start, full.end) == (4, 7)
    # the label as the caption writes it, not our lower-cased label
    assert label.text == "The Dog sees another dog."
    assert mention_texts("A cat on a mat.", "dog", "dog") is None
    # no match inside a longer word
    assert mention_texts("Cattle graze.", "cat", "cat") is None


def test_label_is_the_caption_s_own_text():
    full, label = mention_texts("Dog on a couch", "dog", "dog")
    assert full == SpanText("Dog on a couch", 0, 3)
    assert label == SpanText("Dog on a couch", 0, 3)
    full, label = mention_texts("Rowers pull Long OARS on a Lake.", "long oars", "oars")
    assert full.text[full.start : full.end] == "Long OARS"
    assert label == SpanText("Rowers pull OARS on a Lake.", 12, 16)
    # the label's words are looked for inside the full form's occurrence only
    full, label = mention_texts("A Ski lift near the ski slope.", "ski lift", "ski lift")
    assert label == SpanText("A Ski lift near the ski slope.", 2, 10)
    assert label_as_written("Ski Lift", "lift") == "Lift"


def test_a_label_outside_its_full_form_goes_in_as_stored():
    # not something our entity stage writes (its labels are parts of their full forms)
    full, label = mention_texts("A Puppy sleeps.", "puppy", "dog")
    assert (full.start, full.end) == (2, 7)
    assert label == SpanText("A dog sleeps.", 2, 5)


def test_span_token_positions_overlap_rule():
    # <s> A Ġman Ġ(zero-width, before "rides") r ides </s>
    offsets = [(0, 0), (0, 1), (2, 5), (6, 6), (6, 7), (7, 11), (0, 0)]
    special = [1, 0, 0, 0, 0, 0, 1]
    assert span_token_positions(offsets, special, 6, 11) == [3, 4, 5]
    assert span_token_positions(offsets, special, 2, 5) == [2]
    # a token that crosses the span boundary is masked with it
    assert span_token_positions(offsets, special, 8, 9) == [5]
    # special tokens at (0, 0) never join a span starting at 0
    assert span_token_positions(offsets, special, 0, 1) == [1]
    assert span_token_positions(offsets, special, 5, 6) == []


def test_mask_positions():
    masked, targets = mask_positions([0, 10, 11, 12, 2], [2, 3], 4)
    assert masked == [0, 10, 4, 4, 2]
    assert targets == [11, 12]


@pytest.fixture(scope="module")
def roberta_tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("roberta_tok")
    build_tokenizer("roberta", out)
    return AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize(
    "caption, full_form, label",
    [
        ("A man rides a bicycle down the street.", "a bicycle", "bicycle"),
        ("Rowers pull long oars on a narrow boat.", "long oars", "oars"),
        ("A boat floats on the lake.", "A boat", "boat"),
    ],
)
def test_span_masking_keeps_the_true_tokenisation(roberta_tokenizer, caption, full_form, label):
    tok = roberta_tokenizer
    for item in mention_texts(caption, full_form, label):
        encoded = tok(item.text, return_offsets_mapping=True, return_special_tokens_mask=True)
        positions = span_token_positions(
            encoded["offset_mapping"], encoded["special_tokens_mask"], item.start, item.end
        )
        masked, targets = mask_positions(encoded["input_ids"], positions, tok.mask_token_id)

        prefix = item.text[: item.start].rstrip()
        entity = item.text[item.start : item.end]
        # the seed's way of finding the entity's ids: encode prefix + entity, drop the prefix's ids
        prefix_ids = tok.encode(prefix, add_special_tokens=False) if prefix else []
        joined = f"{prefix} {entity}" if prefix else entity
        expected_targets = tok.encode(joined, add_special_tokens=False)[len(prefix_ids) :]
        assert targets == expected_targets

        first = 1 + len(prefix_ids)  # after <s>
        assert positions == list(range(first, first + len(targets)))
        expected_masked = list(encoded["input_ids"])
        expected_masked[first : first + len(targets)] = [tok.mask_token_id] * len(targets)
        assert masked == expected_masked
        assert masked.count(tok.mask_token_id) == len(targets) > 0


def test_capitalised_label_is_scored_with_the_caption_s_tokens(roberta_tokenizer):
    """"Dog on a couch": the masked label copy hides the tokens of "Dog", not of "dog"."""
    tok = roberta_tokenizer
    _, label = mention_texts("Dog on a couch", "dog", "dog")
    encoded = tok(label.text, return_offsets_mapping=True, return_special_tokens_mask=True)
    positions = span_token_positions(encoded["offset_mapping"], encoded["special_tokens_mask"], label.start, label.end)
    masked, targets = mask_positions(encoded["input_ids"], positions, tok.mask_token_id)
    assert targets == tok.encode("Dog", add_special_tokens=False)
    assert targets != tok.encode("dog", add_special_tokens=False)
    assert tok.decode(masked, skip_special_tokens=False) == "<s>" + "<mask>" * len(targets) + " on a couch</s>"


def test_perplexity_from_log_probs():
    assert perplexity([math.log(0.5), math.log(0.25)]) == pytest.approx(2 ** 1.5, rel=1e-12)
    assert perplexity([0.0, 0.0]) == 1.0
    assert perplexity([math.log(0.3)]) == pytest.approx(1 / 0.3, rel=1e-12)
    assert math.isnan(perplexity([]))


def test_window_bounds_are_strict():
    assert not in_causality_window(1.0, 1.0, 3.33)
    assert not in_causality_window(3.33, 1.0, 3.33)
    assert in_causality_window(1.0000001, 1.0, 3.33)
    assert in_causality_window(3.3299, 1.0, 3.33)
    assert not in_causality_window(0.5, 1.0, 3.33)
    assert not in_causality_window(float("nan"), 1.0, 3.33)
    assert not in_causality_window(float("inf"), 1.0, 3.33)


def test_window_reason_names_label_caption_and_window():
    assert (
        window_reason(5.2081, 1, 3.33, "dog", "c17")
        == "causality ppl 5.21 outside (1.0, 3.33) for 'dog' in caption c17"
    )
