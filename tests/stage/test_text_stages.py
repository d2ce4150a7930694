"""Text generation, choice scoring, entity extraction and instruction generation on a tiny Llama.

The model is a random LlamaForCausalLM saved with save_pretrained and loaded back by path through
`load_causal_lm`, the loader that takes a hub id for the real Llama-2-chat.
"""

import shutil

import pandas as pd
import pytest
import torch
from transformers import GenerationConfig

from groundflow.cvc.entities import entity_candidates, extract_entities, load_entity_prompt, normalize_text
from groundflow.cvc.instructions import build_question, generate_instructions, is_plural
from groundflow.generate.backends import HFTextGenerator
from groundflow.generate.text import encode_prompts, generate_texts, render_prompts, score_choices
from groundflow.io.stage import check_accounting
from groundflow.models.causal_lm import build_tiny_causal_lm, load_causal_lm
from groundflow.models.spec import ModelSpec
from reference.decoding import argmax_decode

PROMPTS = [
    "A man is riding a bicycle",
    "Two dogs",
    "The answer is a cup. The occluded object is probably",
    "In the given image, there is an object heavily occluded by a cluster of gray blocks.",
    "A cat",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"), seed=0, texts=[load_entity_prompt().text])


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return load_causal_lm(ModelSpec(str(tiny_dir), device="cpu"))


def test_build_is_deterministic_and_loads_by_path(tmp_path, lm):
    model, tokenizer = lm
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.tie_word_embeddings is False
    assert tokenizer.padding_side == "left"
    assert not model.training
    a = build_tiny_causal_lm(tmp_path / "a", seed=3)
    b = build_tiny_causal_lm(tmp_path / "b", seed=3)
    c = build_tiny_causal_lm(tmp_path / "c", seed=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_pad_token_falls_back_to_eos(tiny_dir, tmp_path):
    """Llama-2's tokenizer has no pad token: batched left padding then pads with eos."""
    from transformers import AutoTokenizer

    no_pad = tmp_path / "no-pad"
    shutil.copytree(tiny_dir, no_pad)
    tokenizer = AutoTokenizer.from_pretrained(no_pad)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(no_pad)
    assert AutoTokenizer.from_pretrained(no_pad).pad_token is None
    model, loaded = load_causal_lm(ModelSpec(str(no_pad), device="cpu"))
    assert loaded.pad_token == loaded.eos_token
    assert generate_texts(model, loaded, PROMPTS[:3], max_new_tokens=4, batch_size=3) == generate_texts(
        model, loaded, PROMPTS[:3], max_new_tokens=4, batch_size=1
    )


def test_explicit_params_override_saved_generation_config(tiny_dir, tmp_path, lm):
    """A checkpoint's generation_config.json (sampling, penalties) must not leak into our calls."""
    model, tokenizer = lm
    odd = tmp_path / "odd-defaults"
    shutil.copytree(tiny_dir, odd)
    ids = torch.tensor([encode_prompts(tokenizer, [PROMPTS[0]])[0]])
    with torch.no_grad():
        greedy_first = int(model(input_ids=ids).logits[0, -1].argmax())
    # Suppressing the greedy first token changes the output whatever the random weights are
    # (the penalties alone leave a greedy answer without repeats unchanged).
    GenerationConfig(
        do_sample=True, temperature=0.01, top_k=3, repetition_penalty=50.0, no_repeat_ngram_size=1,
        suppress_tokens=[greedy_first],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(odd)
    odd_model, odd_tokenizer = load_causal_lm(ModelSpec(str(odd), device="cpu"))
    assert odd_model.generation_config.repetition_penalty == 50.0
    expected = [argmax_decode(model, tokenizer, p, 12) for p in PROMPTS]
    got = generate_texts(odd_model, odd_tokenizer, PROMPTS, max_new_tokens=12, batch_size=5)
    assert [g[0] for g in got] == expected
    # the saved defaults do change the output when generate() is left to use them
    ids = torch.tensor([encode_prompts(odd_tokenizer, [PROMPTS[0]])[0]])
    with torch.no_grad():
        raw = odd_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12)
    assert odd_tokenizer.decode(raw[0, ids.shape[1]:], skip_special_tokens=True) != expected[0]


def test_batched_greedy_equals_one_at_a_time(lm):
    model, tokenizer = lm
    batched = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=3)
    single = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=1)
    assert batched == single
    assert all(len(outs) == 1 for outs in batched)


def test_sampling_n_per_prompt_seeded(lm):
    model, tokenizer = lm
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.95, num_return_sequences=4, batch_size=2)
    first = generate_texts(model, tokenizer, PROMPTS[:3], seed=7, **kwargs)
    again = generate_texts(model, tokenizer, PROMPTS[:3], seed=7, **kwargs)
    other = generate_texts(model, tokenizer, PROMPTS[:3], seed=8, **kwargs)
    assert [len(samples) for samples in first] == [4, 4, 4]
    assert first == again
    assert first != other
    assert len(set(first[0])) > 1  # a random model at temperature 1.5 does not repeat itself 4 times


def test_stop_strings_cut_the_text(lm):
    model, tokenizer = lm
    full = generate_texts(model, tokenizer, PROMPTS[:2], max_new_tokens=12)
    # stop at a piece of the actual output (characters 3..5), so the cut is guaranteed to happen
    stop = full[0][0][3:5]
    assert stop
    cut = generate_texts(model, tokenizer, PROMPTS[:2], max_new_tokens=12, stop_strings=[stop])
    assert cut[0][0] == full[0][0][: full[0][0].index(stop)]
    assert stop not in cut[1][0]


def test_render_prompts_uses_chat_template_and_prefix(lm):
    _, tokenizer = lm
    rendered = render_prompts(tokenizer, [[{"role": "user", "content": "hi"}], "plain"], assistant_prefix="<begin>\n")
    assert rendered[0].startswith(tokenizer.bos_token)
    assert rendered[0].endswith("assistant<|end_header_id|>\n\n<begin>\n")
    assert rendered[1] == "plain"
    # the template's BOS text is not doubled when encoding
    assert encode_prompts(tokenizer, rendered)[0].count(tokenizer.bos_token_id) == 1
    assert encode_prompts(tokenizer, rendered)[1][0] == tokenizer.bos_token_id


def test_score_choices_matches_unbatched_log_likelihood(lm):
    model, tokenizer = lm
    prompts = ["A man is riding a", "Two dogs are playing with a"]
    choices = [" bicycle", " ball on the green grass", " cup"]
    batched = score_choices(model, tokenizer, prompts, choices, batch_size=4)
    means = score_choices(model, tokenizer, prompts, choices, batch_size=2, normalize="mean")
    for p, prompt in enumerate(prompts):
        prompt_ids = encode_prompts(tokenizer, [prompt])[0]
        for c, choice in enumerate(choices):
            full = encode_prompts(tokenizer, [prompt + choice])[0]
            assert full[: len(prompt_ids)] == prompt_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
            n = len(full) - len(prompt_ids)
            expected = sum(float(logp[t - 1, full[t]]) for t in range(len(prompt_ids), len(full)))
            assert batched[p][c] == pytest.approx(expected, abs=1e-4)
            assert means[p][c] == pytest.approx(expected / n, abs=1e-4)


CAPTIONS = pd.DataFrame(
    {
        "id": ["c1", "c2", "c3", "c4", "c5", "c6", "c7"],
        "image": ["a.jpg", "a.jpg", "b.jpg", "b.jpg", "c.jpg", "c.jpg", "c.jpg"],
        "image_id": ["a", "a", "b", "b", "c", "c", "c"],
        "caption": [
            "A man rides a red bicycle down the street.",
            "A man on a bicycle next to a car.",
            "Two dogs play with a ball in the park.",
            "Dogs running on the GREEN grass.",
            "A cat sleeps on a wooden chair.",
            "It is there.",  # no candidate phrase at all
            "A cup of coffee sits next to a laptop.",
        ],
        "width": [64, 64, 48, 48, 32, 32, 32],
        "height": [40, 40, 30, 30, 20, 20, 20],
        "image_mode": ["RGB"] * 7,
    }
)


def test_extract_entities(lm):
    model, tokenizer = lm
    result = extract_entities(CAPTIONS, HFTextGenerator(model, tokenizer, batch_size=3), max_entities=3, max_span_words=3)
    counts = check_accounting("entities", CAPTIONS["id"], result)
    assert result.parent_column == "caption_ids"
    kept = result.kept
    assert list(result.rejects["id"]) == ["c6"]
    assert result.rejects["reason"].iloc[0] == "no entity extracted from caption c6: 'It is there.'"
    assert counts["out"] == 6 and len(kept) >= 3
    assert list(kept.columns) == [
        "id", "image", "image_id", "width", "height", "image_mode", "label", "caption_ids", "captions", "full_forms",
    ]
    captions = dict(zip(CAPTIONS["id"], CAPTIONS["caption"]))
    images = dict(zip(CAPTIONS["id"], CAPTIONS["image_id"]))
    for row in kept.itertuples():
        assert row.id == f"{row.image_id}-{row.label}"
        assert len(row.caption_ids) == len(row.captions) == len(row.full_forms) >= 1
        for caption_id, caption, full in zip(row.caption_ids, row.captions, row.full_forms):
            assert images[caption_id] == row.image_id and captions[caption_id] == caption
            assert row.label in normalize_text(caption) and full in normalize_text(caption)
            assert row.label in full
            assert (full, row.label) in entity_candidates(caption, 3)
        assert row.width == {"a": 64, "b": 48, "c": 32}[row.image_id]
    assert not kept["id"].duplicated().any()
    per_caption = kept.explode("caption_ids").groupby("caption_ids").size()
    assert per_caption.max() <= 3
    # the same input gives the same output
    again = extract_entities(CAPTIONS, HFTextGenerator(model, tokenizer, batch_size=7), max_entities=3, max_span_words=3)
    pd.testing.assert_frame_equal(again.kept, kept)


def test_extract_entities_all_rejected_keeps_columns(lm):
    model, tokenizer = lm
    df = CAPTIONS[CAPTIONS["id"] == "c6"]
    result = extract_entities(df, HFTextGenerator(model, tokenizer, batch_size=2), max_entities=3, max_span_words=3)
    check_accounting("entities", df["id"], result)
    assert result.kept.empty and "label" in result.kept.columns and "caption_ids" in result.kept.columns


INSTANCES = pd.DataFrame(
    {
        "id": ["a-bicycle", "b-dogs", "c-cat", "c-food"],
        "image_id": ["a", "b", "c", "c"],
        "label": ["bicycle", "dogs", "cat", "food"],
        "caption": [
            "A man rides a red bicycle.",
            "Two dogs play with a ball.",
            "A cat sleeps on a chair.",
            "A plate of food on a table.",
        ],
        "box_score": [0.9, 0.8, 0.7, 0.6],
    }
)


def test_generate_instructions(lm):
    model, tokenizer = lm
    types = ["object", "animal", "vehicle", "person"]
    result = generate_instructions(INSTANCES.iloc[:3], HFTextGenerator(model, tokenizer, batch_size=5), object_types=types)
    check_accounting("instructions", INSTANCES["id"].iloc[:3], result)
    kept = result.kept
    assert list(kept.columns) == list(INSTANCES.columns) + ["object_type", "instruction"]
    for row in kept.itertuples():
        assert row.object_type in types
        assert row.instruction == build_question(row.object_type, is_plural(row.label))
    assert len(kept) + len(result.rejects) == 3
    plural_rows = kept[kept["label"] == "dogs"]
    if len(plural_rows):
        assert "there are " in plural_rows["instruction"].iloc[0]


def test_instruction_revealing_the_entity_is_rejected(lm):
    model, tokenizer = lm
    result = generate_instructions(INSTANCES, HFTextGenerator(model, tokenizer, batch_size=4), object_types=["food"])
    check_accounting("instructions", INSTANCES["id"], result)
    assert list(result.kept["id"]) == ["a-bicycle", "b-dogs", "c-cat"]
    assert list(result.kept["object_type"]) == ["food"] * 3
    assert result.kept["instruction"].iloc[1].startswith("In the given image, there are food items heavily")
    assert list(result.rejects["id"]) == ["c-food"]
    reason = result.rejects["reason"].iloc[0]
    assert reason.startswith("question for c-food would reveal the entity 'food': 'food' occurs in")
    assert result.rejects["stage"].iloc[0] == "instructions"
