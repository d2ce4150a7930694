"""The shared vision generator on a tiny Qwen2.5-VL (real architecture: windowed ViT with 2x2 merge,
M-RoPE decoder), saved with save_pretrained and loaded by path through `make_generator`, as a config
naming Qwen/Qwen2.5-VL-7B-Instruct would load it."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import GenerationConfig

from groundflow.generate.backends import ChatPrompt, HFVisionGenerator, SamplingParams, make_generator
from groundflow.generate.text import batches_by_length, explicit_generation_config, stop_token_ids
from groundflow.generate.vision import render_vision_prompts
from groundflow.models.qwen_vl import build_tiny_qwen_vl

QUESTIONS = ["What colour is the circle?", "How many shapes are in the image?",
             "Which shape is red?\nOptions:\nA. circle\nB. square", "Is there a blue triangle?"]
# Qwen2.5-VL-7B-Instruct's generation_config.json sampling values (spec §10.12)
QWEN_SHIPPED = dict(do_sample=True, temperature=0.1, top_p=0.001, top_k=1, repetition_penalty=1.05)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen") / "tiny-qwen", seed=0, texts=QUESTIONS)


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return make_generator({"backend": "hf", "model": {"path": str(qwen_dir), "device": "cpu"}, "batch_size": 4},
                          kind="vision")


def _images():
    rng = np.random.default_rng(0)
    shapes = [(50, 80), (90, 40), (64, 64), (120, 70)]  # different grids: different numbers of image tokens
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def _prompts():
    return [ChatPrompt(messages=[{"role": "user", "content": q}], image=im) for q, im in zip(QUESTIONS, _images())]


def _transformers_own(model, processor, prompts, params: SamplingParams, batch_size: int):
    """What generate() samples on its own, each prompt and its image repeated n times, with the
    explicit settings; in our generator's batch order."""
    tokenizer = processor.tokenizer
    rendered = render_vision_prompts(processor, [p.messages for p in prompts], [True] * len(prompts))
    (order,) = batches_by_length([len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]],
                                 batch_size)
    saved, tokenizer.padding_side = tokenizer.padding_side, "left"
    inputs = processor(images=[prompts[i].image for i in order], text=[rendered[i] for i in order], padding=True,
                       return_tensors="pt")
    tokenizer.padding_side = saved
    config = GenerationConfig(
        max_new_tokens=params.max_new_tokens, do_sample=True, temperature=params.temperature, top_p=params.top_p,
        top_k=params.top_k, repetition_penalty=params.repetition_penalty, num_return_sequences=params.n,
        eos_token_id=stop_token_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(params.seed)
    with torch.no_grad(), explicit_generation_config(model):
        output = model.generate(**inputs, generation_config=config)
    texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    grouped = [[] for _ in prompts]
    for row, text in enumerate(texts):
        grouped[order[row // params.n]].append(text)
    return grouped


def test_make_generator_loads_qwen_by_its_config_without_square_padding(qwen, qwen_dir):
    assert type(qwen.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert qwen.describe()["pad_square"] is False
    forced = make_generator({"backend": "hf", "model": {"path": str(qwen_dir), "device": "cpu"}, "pad_square": True},
                            kind="vision")
    assert forced.pad_square is True


def test_k_samples_of_a_group_share_one_prompt_pass_and_draw_what_transformers_draws(qwen, monkeypatch):
    params = SamplingParams(max_new_tokens=10, n=4, do_sample=True, temperature=1.0, top_p=0.95, top_k=50, seed=3)
    encoded = []
    inner = qwen.model.model
    original = type(inner).get_image_features

    def spy(self, pixel_values, image_grid_thw=None, **kwargs):
        encoded.append(len(image_grid_thw))
        return original(self, pixel_values, image_grid_thw, **kwargs)

    monkeypatch.setattr(type(inner), "get_image_features", spy)
    got = qwen.generate(_prompts(), params)
    assert encoded == [4]  # 4 images encoded once for their 16 samples, in one generate call
    monkeypatch.undo()
    assert [len(samples) for samples in got] == [4, 4, 4, 4]
    assert all(len(set(samples)) > 1 for samples in got)  # the completions of each group differ
    # the shared prompt pass (3-D rotary positions from each image's grid) changes no sampled token
    assert got == _transformers_own(qwen.model, qwen.processor, _prompts(), params, batch_size=4)
    again = qwen.generate(_prompts(), params)
    assert again == got  # seeded


def test_shared_prompt_pass_in_a_padded_batch_scores_as_each_prompt_alone(qwen):
    """Logits of the first 3 generated tokens of every row of a left-padded batch of differently
    sized images, prompt pass shared by n=2 rows, against a plain full forward of each prompt alone
    (no padding, no cache, positions computed by the model from that prompt's grid)."""
    from groundflow.generate.text import generate_sharing_prompts

    model, processor, tokenizer = qwen.model, qwen.processor, qwen.processor.tokenizer
    prompts = _prompts()
    rendered = render_vision_prompts(processor, [p.messages for p in prompts], [True] * len(prompts))
    tokenizer.padding_side = "left"
    batch = processor(images=[p.image for p in prompts], text=rendered, padding=True, return_tensors="pt")
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # really padded: the grids differ
    config = GenerationConfig(max_new_tokens=3, do_sample=True, top_k=1, num_return_sequences=2,
                              output_logits=True, return_dict_in_generate=True,
                              eos_token_id=stop_token_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad(), explicit_generation_config(model):
        out = generate_sharing_prompts(model, batch, generation_config=config, logits_processor=[])
    width = batch["input_ids"].shape[1]
    for index, (prompt, text) in enumerate(zip(prompts, rendered)):
        alone = processor(images=[prompt.image], text=[text], return_tensors="pt")
        for row in (2 * index, 2 * index + 1):
            new_tokens = out.sequences[row, width:]
            ids = torch.cat([alone["input_ids"], new_tokens[None, :2]], dim=1)
            mask = torch.ones_like(ids)
            types = torch.cat([alone["mm_token_type_ids"], torch.zeros_like(new_tokens[None, :2])], dim=1)
            with torch.no_grad():
                model.model.rope_deltas = None
                logits = model(input_ids=ids, attention_mask=mask, pixel_values=alone["pixel_values"],
                               image_grid_thw=alone["image_grid_thw"], mm_token_type_ids=types).logits[0, -3:]
            got = torch.stack([step[row] for step in out.logits])
            torch.testing.assert_close(got, logits, rtol=1e-4, atol=1e-4)


def test_a_checkpoints_shipped_sampling_defaults_do_not_leak(qwen, qwen_dir, tmp_path):
    """Qwen's generation_config (top_k 1, temperature 0.1, ...) would make every rollout the same."""
    shipped = tmp_path / "qwen-shipped-defaults"
    shutil.copytree(qwen_dir, shipped)
    tokenizer = qwen.processor.tokenizer
    GenerationConfig(**QWEN_SHIPPED, eos_token_id=stop_token_ids(qwen.model, tokenizer),
                     pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id).save_pretrained(shipped)
    generator = make_generator({"backend": "hf", "model": {"path": str(shipped), "device": "cpu"}}, kind="vision")
    assert generator.model.generation_config.top_k == 1
    params = SamplingParams(max_new_tokens=8, n=6, do_sample=True, temperature=1.0, top_p=0.95, top_k=50, seed=0)
    prompt = _prompts()[:1]
    assert len(set(generator.generate(prompt, params)[0])) > 1
    assert generator.generate(prompt, params) == qwen.generate(prompt, params)  # the saved defaults change nothing
    # left to generate() itself, the shipped defaults fill the unset knobs: one completion, six times
    rendered = render_vision_prompts(generator.processor, [prompt[0].messages], [True])
    inputs = generator.processor(images=[prompt[0].image], text=rendered, return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        raw = generator.model.generate(**inputs, max_new_tokens=8, num_return_sequences=6)
    assert len(set(tokenizer.batch_decode(raw[:, inputs["input_ids"].shape[1]:]))) == 1
