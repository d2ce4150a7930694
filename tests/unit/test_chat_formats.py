"""Conversation formats: LLaVA-1.5's Vicuna v1 layout, rendered for training and for prompting
from the one registry, checked against hand-written strings."""

import pytest
from transformers import AutoTokenizer

from groundflow.models.tokenizers import build_tokenizer
from groundflow.train.chat_formats import (
    VICUNA_V1_SYSTEM,
    chat_template_for,
    resolve_chat_template,
)
from groundflow.train.conversations import (
    IGNORE_INDEX,
    assistant_only_labels,
    render_conversation,
    to_chat_messages,
)

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat is it?"},
    {"from": "gpt", "value": "A dog."},
    {"from": "human", "value": "Sure?"},
    {"from": "gpt", "value": "Yes it is."},
]
# LLaVA's conv_vicuna_v1.get_prompt() (SeparatorStyle.TWO, sep " ", sep2 "</s>"), written out by hand
VICUNA_TWO_TURNS = (
    SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A dog.</s>USER: Sure? ASSISTANT: Yes it is.</s>"
)


@pytest.fixture(scope="module")
def vicuna_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("vicuna-tok")
    build_tokenizer("vicuna", path, texts=["What is it? A dog. Sure? Yes it is."])
    return AutoTokenizer.from_pretrained(path)


def test_system_sentence_is_llavas():
    assert VICUNA_V1_SYSTEM == SYSTEM


def test_two_turn_conversation_renders_as_vicuna_v1(vicuna_tokenizer):
    rendered = render_conversation(CONVERSATION, vicuna_tokenizer, chat_template="vicuna_v1")
    assert rendered.text == VICUNA_TWO_TURNS
    assert rendered.add_special_tokens  # the tokenizer adds <s>, as LLaVA's tokenizer call does


def test_structured_messages_render_the_same(vicuna_tokenizer):
    """The processor path (image as a content part) gives the same text as the plain one."""
    structured = vicuna_tokenizer.apply_chat_template(
        to_chat_messages(CONVERSATION, structured=True), tokenize=False, chat_template=chat_template_for("vicuna_v1")
    )
    assert structured == VICUNA_TWO_TURNS


def test_labels_cover_exactly_each_answer_and_its_eos(vicuna_tokenizer):
    ids, labels = assistant_only_labels(CONVERSATION, vicuna_tokenizer, chat_template="vicuna_v1", max_length=512)
    assert ids[0] == vicuna_tokenizer.bos_token_id
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
                current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(current)
    decoded = [vicuna_tokenizer.decode(run) for run in runs]
    assert decoded == [" A dog.</s>", " Yes it is.</s>"]
    eos = vicuna_tokenizer.eos_token_id
    assert [i for i, t in enumerate(ids) if t == eos] == [i for i, l in enumerate(labels) if l == eos]


def test_generation_prompt_is_where_the_answer_starts(vicuna_tokenizer):
    messages = to_chat_messages(CONVERSATION[:1], structured=True)
    prompt = vicuna_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, chat_template=chat_template_for("vicuna_v1")
    )
    assert prompt == SYSTEM + " USER: <image>\nWhat is it? ASSISTANT:"
    assert VICUNA_TWO_TURNS.startswith(prompt + " A dog.</s>")


def test_a_system_turn_replaces_the_default_sentence(vicuna_tokenizer):
    conversation = [{"from": "system", "value": "Be brief."}, *CONVERSATION[:2]]
    rendered = render_conversation(conversation, vicuna_tokenizer, chat_template="vicuna_v1")
    assert rendered.text == "Be brief. USER: <image>\nWhat is it? ASSISTANT: A dog.</s>"


def test_cvc_t1_is_the_originals_trial_prompt(vicuna_tokenizer):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What might it be?"}]}]
    prompt = vicuna_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, chat_template=chat_template_for("cvc_t1")
    )
    assert prompt == "USER: <image>\nWhat might it be?\nASSISTANT:"


def test_format_names_resolve_and_unknown_ones_fail():
    assert chat_template_for("model") is None
    assert resolve_chat_template("vicuna_v1") == chat_template_for("vicuna_v1")
    own = "{{ messages[0]['content'] }}"
    assert resolve_chat_template(own) == own and resolve_chat_template(None) is None
    with pytest.raises(ValueError, match="vicuna_v2"):
        chat_template_for("vicuna_v2")


def test_an_openai_endpoint_gets_the_formats_template(monkeypatch):
    """vLLM renders the messages itself: a format other than the model's goes with each request."""
    from groundflow.generate.backends import SamplingParams, make_generator
    from groundflow.generate.openai_compat import request_arguments

    monkeypatch.setenv("GF_TEST_KEY", "x")
    spec = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "served_model": "m", "api_key_env": "GF_TEST_KEY"}
    assert make_generator(spec, kind="vision").chat_template is None
    generator = make_generator({**spec, "conversation_format": "cvc_t1"}, kind="vision")
    assert generator.chat_template == chat_template_for("cvc_t1")
    arguments = request_arguments([], SamplingParams(max_new_tokens=4), model="m", n=1, seed=0,
                                  continue_final_message=False, chat_template=generator.chat_template)
    assert arguments["extra_body"] == {"chat_template": chat_template_for("cvc_t1")}
    with pytest.raises(ValueError, match="conversation_format applies to vision"):
        make_generator({**spec, "conversation_format": "vicuna_v1"}, kind="text")
