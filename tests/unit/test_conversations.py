import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from groundflow.models.llava import build_tiny_llava
from groundflow.models.tokenizers import build_tokenizer
from groundflow.train.conversations import (
    IGNORE_INDEX,
    ConversationError,
    assistant_only_labels,
    labels_for_spans,
    num_image_tokens,
    render_conversation,
    to_chat_messages,
    truncate_example,
)

CONVERSATION = [
    {"from": "human", "value": "What is it?"},
    {"from": "gpt", "value": "A dog."},
    {"from": "human", "value": "Sure?"},
    {"from": "gpt", "value": "Yes it is."},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer("llama", path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = build_tiny_llava(tmp_path_factory.mktemp("llava") / "tiny-llava", seed=0)
    return AutoProcessor.from_pretrained(path)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_to_chat_messages_plain_and_structured():
    conversation = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cup."}]
    assert to_chat_messages(conversation) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nWhat is it?"},
        {"role": "assistant", "content": "A cup."},
    ]
    structured = to_chat_messages(conversation, structured=True)
    assert structured[1] == {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    assert structured[2] == {"role": "assistant", "content": [{"type": "text", "text": "A cup."}]}
    with pytest.raises(ConversationError, match="speaker 'bot'"):
        to_chat_messages([{"from": "bot", "value": "x"}])


def test_two_turn_labels_are_exactly_the_assistant_tokens(tokenizer):
    ids, labels = assistant_only_labels(CONVERSATION, tokenizer, max_length=512)

    # The exact sequence: Llama-3 layout, BOS written by the template (not added twice).
    text = tokenizer.apply_chat_template(
        [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in CONVERSATION],
        tokenize=False,
    )
    assert ids == _ids(tokenizer, text)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1

    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    answer_1 = _ids(tokenizer, "A dog.") + [eot]
    answer_2 = _ids(tokenizer, "Yes it is.") + [eot]
    prefix_1 = _ids(tokenizer, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is it?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    middle = _ids(tokenizer, "<|start_header_id|>user<|end_header_id|>\n\nSure?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ids == prefix_1 + answer_1 + middle + answer_2
    expected = [IGNORE_INDEX] * len(prefix_1) + answer_1 + [IGNORE_INDEX] * len(middle) + answer_2
    assert labels == expected
    supervised = [tokenizer.decode([t]) for t in labels if t != IGNORE_INDEX]
    assert "".join(supervised) == "A dog.<|eot_id|>Yes it is.<|eot_id|>"


def test_truncation_keeps_ids_and_labels_aligned(tokenizer):
    full_ids, full_labels = assistant_only_labels(CONVERSATION, tokenizer, max_length=512)
    cut = len(full_ids) - 3
    ids, labels = assistant_only_labels(CONVERSATION, tokenizer, max_length=cut)
    assert ids == full_ids[:cut] and labels == full_labels[:cut]
    assert len(ids) == len(labels) == cut
    assert all(l == IGNORE_INDEX or l == i for i, l in zip(ids, labels))


def test_labels_for_spans_overlap_rule_and_exclusions():
    ids = [7, 8, 9, 10, 11]
    offsets = [(0, 0), (0, 3), (3, 6), (6, 9), (9, 12)]
    # span [4, 7) overlaps tokens 2 and 3; token 0 has an empty span; id 10 is excluded
    assert labels_for_spans(ids, offsets, [(4, 7)]) == [IGNORE_INDEX, IGNORE_INDEX, 9, 10, IGNORE_INDEX]
    assert labels_for_spans(ids, offsets, [(4, 7)], never=[10]) == [IGNORE_INDEX, IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX]
    assert labels_for_spans(ids, offsets, [(0, 3), (9, 12)]) == [IGNORE_INDEX, 8, IGNORE_INDEX, IGNORE_INDEX, 11]


def test_content_spans_allow_masking_inside_an_answer(tokenizer):
    """What CINGS does: train the answer, not the passage inside the assistant turn."""
    conversation = [{"from": "human", "value": "Who?"}, {"from": "gpt", "value": "## Context The cat sat. ## Answer A cat."}]
    rendered = render_conversation(conversation, tokenizer)
    (start, end), = rendered.assistant_spans
    (content_start, content_end), = rendered.content_spans
    assert rendered.text[start:end] == "## Context The cat sat. ## Answer A cat.<|eot_id|>"
    assert rendered.text[content_start:content_end] == "## Context The cat sat. ## Answer A cat."
    passage_start = rendered.text.index(" The cat sat.", content_start)
    passage_end = passage_start + len(" The cat sat.")
    encoded = tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens, return_offsets_mapping=True)
    labels = labels_for_spans(encoded["input_ids"], encoded["offset_mapping"], [(start, passage_start), (passage_end, end)])
    kept = "".join(tokenizer.decode([t]) for t in labels if t != IGNORE_INDEX)
    assert kept == "## Context ## Answer A cat.<|eot_id|>"


def test_llava_image_tokens_expanded_as_the_processor_does_and_never_labelled(processor):
    conversation = [dict(t) for t in CONVERSATION]
    conversation[0]["value"] = "<image>\nWhat is it?"
    n_image = num_image_tokens(processor)
    assert n_image == (64 // 16) ** 2  # CLS dropped by the "default" feature strategy

    ids, labels = assistant_only_labels(conversation, processor, max_length=512)
    rendered = render_conversation(conversation, processor)
    # LLaVA-1.5's layout; the template ends answers with a space, so EOS is inserted after each answer
    unexpanded = rendered.text.replace("<image>" * n_image, "<image>")
    assert unexpanded == "USER: <image>\nWhat is it? ASSISTANT: A dog.<|eot_id|> USER: Sure? ASSISTANT: Yes it is.<|eot_id|> "
    by_processor = processor(text=[unexpanded], images=[Image.new("RGB", (64, 64))], return_tensors="np")
    assert ids == by_processor["input_ids"][0].tolist()

    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    ids_array, labels_array = np.array(ids), np.array(labels)
    assert (ids_array == image_id).sum() == n_image
    assert (labels_array[ids_array == image_id] == IGNORE_INDEX).all()
    supervised = "".join(processor.tokenizer.decode([t]) for t in labels if t != IGNORE_INDEX)
    assert supervised == " A dog.<|eot_id|> Yes it is.<|eot_id|>"
    # the answer's first token carries the space after "ASSISTANT:", as generation produces it
    first = next(i for i, l in enumerate(labels) if l != IGNORE_INDEX)
    assert processor.tokenizer.decode(ids[:first]).endswith("ASSISTANT:")


def test_truncation_through_image_tokens_is_refused(processor):
    conversation = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A dog."}]
    with pytest.raises(ConversationError, match="cuts through the image tokens"):
        assistant_only_labels(conversation, processor, max_length=8)
    with pytest.raises(ConversationError, match="3 input ids but 2 labels"):
        truncate_example([1, 2, 3], [1, 2], 2)
