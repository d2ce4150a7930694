"""Llama-3.1-Instruct's tokenizer has no pad token and ends every turn with <|eot_id|>, its EOS.
A pad that falls back to EOS must neither hide nor double that end of turn, training pads with the
reserved <|finetune_right_pad_id|>, and a trained checkpoint's stop tokens include the end of turn.
The tokenizer is the demo's tiny "llama3" flavour, which, like the real one, has no pad."""
import copy

import pytest
from transformers import AutoTokenizer, GenerationConfig

from groundflow.models.tokenizers import build_tokenizer, ensure_pad_token
from groundflow.train.conversations import assistant_only_labels, end_of_turn_token, render_conversation
from groundflow.train.trainer import stopping_generation_config

CONVERSATION = [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "Which sea?"},
    {"from": "gpt", "value": "The Black Sea."},
    {"from": "human", "value": "And the river?"},
    {"from": "gpt", "value": "The Danube."},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3-tokenizer")
    build_tokenizer("llama3", path)
    return AutoTokenizer.from_pretrained(path)


def test_llama3_flavour_is_pad_less_like_llama31_instruct(tokenizer):
    assert tokenizer.pad_token is None and tokenizer.pad_token_id is None
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.bos_token == "<|begin_of_text|>"
    vocab = tokenizer.get_vocab()
    assert {"<|finetune_right_pad_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"} <= set(vocab)


def test_a_missing_pad_becomes_the_reserved_finetune_pad_not_eos(tokenizer):
    tok = copy.deepcopy(tokenizer)
    assert ensure_pad_token(tok) == "<|finetune_right_pad_id|>"
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|finetune_right_pad_id|>") != tok.eos_token_id
    already = copy.deepcopy(tokenizer)
    already.pad_token = "<|end_of_text|>"
    assert ensure_pad_token(already) == "<|end_of_text|>"  # a pad the checkpoint has is kept


@pytest.mark.parametrize("pad", [None, "<|eot_id|>", "<|finetune_right_pad_id|>"])
def test_each_assistant_turn_ends_with_exactly_one_supervised_eot_whatever_the_pad(tokenizer, pad):
    """pad == <|eot_id|> is what a checkpoint padded with EOS carries; the end of turn the template
    writes must still be found, not dropped from the specials and appended a second time."""
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = pad
    rendered = render_conversation(CONVERSATION, tok)
    assert "<|eot_id|><|eot_id|>" not in rendered.text
    ids, labels = assistant_only_labels(CONVERSATION, tok, max_length=512)
    tokens = tok.convert_ids_to_tokens(ids)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert tokens.count("<|eot_id|>") == 5  # system, two user and two assistant turns, once each
    supervised_eots = [i for i, (t, label) in enumerate(zip(ids, labels)) if t == eot and label == eot]
    assert len(supervised_eots) == 2
    for position in supervised_eots:
        assert tokens[position - 1] == "."  # right after the answer ("... Sea." / "... Danube.")
        assert tokens[position + 1 : position + 2] in ([], ["<|start_header_id|>"])


def test_end_of_turn_token_is_the_templates_or_the_appended_eos(tokenizer, tmp_path):
    assert end_of_turn_token(tokenizer) == "<|eot_id|>"
    vicuna = build_tokenizer("vicuna", tmp_path / "vicuna")
    assert end_of_turn_token(vicuna, chat_template="vicuna_v1") == "</s>"


def test_stop_tokens_list_the_base_eos_and_the_end_of_turn(tokenizer):
    """Llama-3.1 base ends text with <|end_of_text|>; the Instruct tokenizer ends turns with <|eot_id|>."""
    end_of_text = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    base = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=end_of_text)
    stopping = stopping_generation_config(base, tokenizer, None)
    assert stopping.eos_token_id == [end_of_text, eot]
    assert base.eos_token_id == end_of_text  # the model's own config is not changed in place
    assert stopping_generation_config(stopping, tokenizer, None).eos_token_id == [end_of_text, eot]
