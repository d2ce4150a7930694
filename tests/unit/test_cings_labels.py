"""CINGS labels: the exact label vector of each mode and mask mode, one and several passages.

Vectors are written token by token: `+tok` carries a loss (label = its id), `-tok` has label -100.
The tokenizer is the demo's tiny Llama-3-style one (Llama-3 pre-tokenizer, Llama-3.1-Instruct chat
template; its assistant header is 4 tokens, as in Llama-3), built deterministically.
"""
import copy

import numpy as np
import pytest
from transformers import AutoTokenizer

from groundflow.cings.data import convert_lines, training_conversation
from groundflow.cings.fixture import fixture_texts, make_selfrag_fixture
from groundflow.cings.labels import CingsLabeler, LabelSettings, unmask_token_ids
from groundflow.models.tokenizers import build_tokenizer, ensure_pad_token
from groundflow.train.conversations import IGNORE_INDEX
from groundflow.train.data import SFTCollator
from reference.cings_labels import original_style_labels

SINGLE = "## Context Danube\nThe Danube flows into the Black Sea. ## Answer The Black Sea."
MULTI = SINGLE + " ## Context Saturn\nSaturn has rings. ## Answer It has rings."

# system block + user turn: masked except the special tokens (LLaVA-NeXT's un-mask rule)
PROMPT = (
    "+<|begin_of_text|> +<|start_header_id|> -system +<|end_header_id|> -ĊĊ -Cutting -ĠKnowledge -ĠDate -: "
    "-ĠDecember -Ġ -202 -3 -Ċ -Today -ĠDate -: -Ġ -26 -ĠJul -Ġ -202 -4 -ĊĊ -B -e -Ġb -rie -f -. +<|eot_id|> "
    "+<|start_header_id|> -user +<|end_header_id|> -ĊĊ -Which -Ġsea -? +<|eot_id|> "
)
HEADER = "+<|start_header_id|> +assistant +<|end_header_id|> "

EXPECTED = {
    # standard IT: the passage is not in the text; the whole turn is trained on
    ("no_context", SINGLE): HEADER + "+ĊĊ +The +ĠBlack +ĠSea +. +<|eot_id|>",
    ("no_context", MULTI): HEADER + "+ĊĊ +The +ĠBlack +ĠSea +. +ĠIt +Ġhas +Ġrings +. +<|eot_id|>",
    # CINGS, intended: exactly the passage tokens are masked; markers and answer are trained on
    ("context", "intended", SINGLE): HEADER
    + "+ĊĊ +## +ĠContext -ĠDanube -Ċ -The -ĠDanube -Ġflows -Ġinto -Ġthe -ĠBlack -ĠSea -. "
    "+Ġ## +ĠAnswer +ĠThe +ĠBlack +ĠSea +. +<|eot_id|>",
    ("context", "intended", MULTI): HEADER
    + "+ĊĊ +## +ĠContext -ĠDanube -Ċ -The -ĠDanube -Ġflows -Ġinto -Ġthe -ĠBlack -ĠSea -. "
    "+Ġ## +ĠAnswer +ĠThe +ĠBlack +ĠSea +. +Ġ## +ĠContext -ĠSaturn -Ċ -Saturn -Ġhas -Ġrings -. "
    "+Ġ## +ĠAnswer +ĠIt +Ġhas +Ġrings +. +<|eot_id|>",
    # CINGS, compat: the original's mask, 4 tokens (the header) early: "\n\n", `##`, ` Context`
    # masked, the last 4 passage tokens trained on. A later block's content prefix ends in a space,
    # which tokenised alone is one token more, so its mask starts 3 tokens early and masks the tail
    # of the previous answer.
    ("context", "compat", SINGLE): HEADER
    + "-ĊĊ -## -ĠContext -ĠDanube -Ċ -The -ĠDanube -Ġflows -Ġinto +Ġthe +ĠBlack +ĠSea +. "
    "+Ġ## +ĠAnswer +ĠThe +ĠBlack +ĠSea +. +<|eot_id|>",
    ("context", "compat", MULTI): HEADER
    + "-ĊĊ -## -ĠContext -ĠDanube -Ċ -The -ĠDanube -Ġflows -Ġinto +Ġthe +ĠBlack +ĠSea +. "
    "+Ġ## +ĠAnswer +ĠThe +ĠBlack +ĠSea -. -Ġ## -ĠContext -ĠSaturn -Ċ +Saturn +Ġhas +Ġrings +. "
    "+Ġ## +ĠAnswer +ĠIt +Ġhas +Ġrings +. +<|eot_id|>",
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3-tok")
    build_tokenizer("llama3", path, fixture_texts())
    return AutoTokenizer.from_pretrained(path)


def _conversation(answer: str, mode: str) -> list[dict]:
    from groundflow.cings.data import convert_markers

    markers = answer.replace("## Context", "[Ex]").replace(" ## Answer", " [Cs]")
    text = convert_markers(markers, remove_context=mode == "no_context")
    return [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Which sea?"}, {"from": "gpt", "value": text}]


def _vector(tokenizer, ids, labels) -> str:
    tokens = tokenizer.convert_ids_to_tokens(ids)
    for token_id, label in zip(ids, labels):
        assert label in (token_id, IGNORE_INDEX)
    return " ".join(("+" if label != IGNORE_INDEX else "-") + t for t, label in zip(tokens, labels))


def _encode(tokenizer, answer, mode, mask_mode):
    result = CingsLabeler(tokenizer, LabelSettings(mode, mask_mode)).encode([_conversation(answer, mode)])[0]
    return result, _vector(tokenizer, result.input_ids, result.labels)


@pytest.mark.parametrize("answer", [SINGLE, MULTI], ids=["single", "multi"])
@pytest.mark.parametrize("mask_mode", ["intended", "compat"])
def test_no_context_labels(tokenizer, answer, mask_mode):
    _, vector = _encode(tokenizer, answer, "no_context", mask_mode)
    assert vector == PROMPT + EXPECTED[("no_context", answer)]


@pytest.mark.parametrize("answer", [SINGLE, MULTI], ids=["single", "multi"])
@pytest.mark.parametrize("mask_mode", ["intended", "compat"])
def test_no_mask_labels_train_on_passage_and_markers(tokenizer, answer, mask_mode):
    _, vector = _encode(tokenizer, answer, "no_mask", mask_mode)
    everything = EXPECTED[("context", "intended", answer)].replace("-", "+")
    assert vector == PROMPT + everything


@pytest.mark.parametrize("answer", [SINGLE, MULTI], ids=["single", "multi"])
@pytest.mark.parametrize("mask_mode", ["intended", "compat"])
def test_context_labels(tokenizer, answer, mask_mode):
    result, vector = _encode(tokenizer, answer, "context", mask_mode)
    assert vector == PROMPT + EXPECTED[("context", mask_mode, answer)]
    assert result.n_masked_in_assistant == EXPECTED[("context", mask_mode, answer)].count(" -")


def test_intended_mask_is_exactly_the_passage_text(tokenizer):
    result, _ = _encode(tokenizer, MULTI, "context", "intended")
    ids, labels = np.asarray(result.input_ids), np.asarray(result.labels)
    start = len(PROMPT.split())
    masked = ids[start:][labels[start:] == IGNORE_INDEX]
    assert tokenizer.decode(masked) == " Danube\nThe Danube flows into the Black Sea. Saturn\nSaturn has rings."


def test_batched_compat_equals_the_originals_per_example_construction(tokenizer, tmp_path):
    make_selfrag_fixture(tmp_path, seed=0, n_records=16)
    kept, _, _ = convert_lines((tmp_path / "selfrag.jsonl").read_text().splitlines())
    for mode in ("no_context", "context", "no_mask"):
        settings = LabelSettings(mode, "compat")
        conversations = [training_conversation(r.as_dict(), mode, "Be brief.") for r in kept]
        for conversation, result in zip(conversations, CingsLabeler(tokenizer, settings).encode(conversations)):
            assert original_style_labels(conversation, tokenizer, settings) == (result.input_ids, result.labels)


def test_padding_labels_are_ignored_and_attention_comes_from_lengths(tokenizer):
    """Token id 0 is `<|begin_of_text|>` here (`!` in Llama-3): the original's `ids != 0` would hide
    it from attention and its padding labels of 0 would train the model to emit it."""
    labeler = CingsLabeler(tokenizer, LabelSettings("context"))
    short, long = labeler.encode([_conversation(SINGLE, "context"), _conversation(MULTI, "context")])
    assert short.input_ids[0] == 0
    pad_id = tokenizer.convert_tokens_to_ids(ensure_pad_token(copy.deepcopy(tokenizer)))  # Llama-3.1 has no pad
    batch = SFTCollator(pad_id)([
        {"input_ids": short.input_ids, "labels": short.labels},
        {"input_ids": long.input_ids, "labels": long.labels},
    ])
    width = len(long.input_ids)
    assert batch["attention_mask"][0].tolist() == [1] * len(short.input_ids) + [0] * (width - len(short.input_ids))
    assert batch["attention_mask"][1].tolist() == [1] * width
    assert batch["labels"][0, len(short.input_ids):].eq(IGNORE_INDEX).all()


def test_settings_and_vocabulary_are_checked(tokenizer):
    with pytest.raises(ValueError, match="unknown CINGS mode"):
        LabelSettings("context_with_sp")
    with pytest.raises(ValueError, match="unknown mask_mode"):
        LabelSettings("context", "shifted")
    with pytest.raises(ValueError, match=r"not in the tokenizer's vocabulary: \['\\n\\n'\]"):
        unmask_token_ids(tokenizer, ["<|eot_id|>", "\n\n"])
    with pytest.raises(ValueError, match="compat"):
        original_style_labels(_conversation(SINGLE, "context"), tokenizer, LabelSettings("context", "intended"))
