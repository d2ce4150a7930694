import hashlib

import pytest
from transformers import AutoTokenizer

from groundflow.models.tokenizers import build_tokenizer


def _digest(folder):
    return hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()


@pytest.mark.parametrize("flavor", ["llama", "roberta", "bert"])
def test_tokenizers_are_deterministic_and_reload(tmp_path, flavor):
    build_tokenizer(flavor, tmp_path / "a")
    build_tokenizer(flavor, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    ids = tok("A red ball next to a house.")["input_ids"]
    expected = "a red ball next to a house." if flavor == "bert" else "A red ball next to a house."
    assert tok.decode(ids, skip_special_tokens=True).strip() == expected
    assert tok.pad_token_id is not None


def test_llama_flavor_has_llama3_chat_template_and_image_token(tmp_path):
    tok = build_tokenizer("llama", tmp_path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id


def test_bert_flavor_encodes_unseen_words_without_unk(tmp_path):
    tok = build_tokenizer("bert", tmp_path)
    assert tok.unk_token_id not in tok("zebra xylophone")["input_ids"]
