"""The HF generators on tiny models built in tmp: a real LlavaForConditionalGeneration and a Llama.

Both are saved with save_pretrained and loaded back by path through `make_generator`, the same way
a config naming llava-hf/llava-1.5-7b-hf or a Llama checkpoint would load them.
"""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import GenerationConfig, LlavaProcessor

from groundflow.generate.backends import (
    ChatPrompt,
    Generator,
    HFTextGenerator,
    HFVisionGenerator,
    SamplingParams,
    make_generator,
)
from groundflow.generate.text import (
    batches_by_length,
    encode_prompts,
    explicit_generation_config,
    render_prompts,
    stop_token_ids,
)
from groundflow.generate.vision import render_vision_prompts
from groundflow.models.causal_lm import build_tiny_causal_lm
from groundflow.models.llava import build_tiny_llava, mean_fill, pad_to_square

QUESTIONS = [
    "What is it?",
    "What might the object occluded by the gray blocks be? Let's think step by step.",
    "Which animal is hidden behind the blocks?",
    "Name the object.",
]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "tiny-llava", seed=0, texts=QUESTIONS)


@pytest.fixture(scope="module")
def vision(llava_dir):
    return make_generator({"backend": "hf", "model": {"path": str(llava_dir), "device": "cpu"}, "batch_size": 4},
                          kind="vision")


@pytest.fixture(scope="module")
def text_generator(tmp_path_factory):
    path = build_tiny_causal_lm(tmp_path_factory.mktemp("llama") / "tiny-llama", seed=0, texts=QUESTIONS)
    return make_generator({"backend": "hf", "model": {"path": str(path), "device": "cpu"}, "batch_size": 4},
                          kind="text")


def _images():
    rng = np.random.default_rng(0)
    shapes = [(50, 80), (90, 40), (64, 64), (33, 70)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def _prompts(images=None, prefix=""):
    images = images if images is not None else _images()
    return [
        ChatPrompt(messages=[{"role": "user", "content": q}], image=image, assistant_prefix=prefix)
        for q, image in zip(QUESTIONS, images)
    ]


@torch.no_grad()
def argmax_decode_llava(model, processor, prompt: str, image, max_new_tokens: int) -> str:
    """Greedy decoding the slow, obvious way: full forward pass per step, no cache, no padding."""
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    ids = inputs["input_ids"]
    start = ids.shape[1]
    eos = processor.tokenizer.eos_token_id
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, pixel_values=inputs["pixel_values"], attention_mask=torch.ones_like(ids)).logits
        next_id = logits[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
        if int(next_id) == eos:
            break
    return processor.tokenizer.decode(ids[0, start:], skip_special_tokens=True)


def test_make_generator_loads_a_real_llava_and_describes_it(vision, llava_dir):
    assert isinstance(vision, HFVisionGenerator) and isinstance(vision, Generator)
    assert type(vision.model).__name__ == "LlavaForConditionalGeneration"
    assert vision.describe() == {
        "backend": "hf", "kind": "vision", "model": str(llava_dir), "dtype": "torch.float32",
        "device": "cpu", "batch_size": 4, "pad_square": True, "conversation_format": "model",
    }


def test_n_samples_per_prompt_seeded(vision):
    params = SamplingParams(max_new_tokens=8, n=3, do_sample=True, temperature=1.0, top_p=0.9, seed=5)
    first = vision.generate(_prompts(), params)
    again = vision.generate(_prompts(), params)
    other = vision.generate(_prompts(), SamplingParams(max_new_tokens=8, n=3, do_sample=True, top_p=0.9, seed=6))
    assert [len(samples) for samples in first] == [3, 3, 3, 3]
    assert first == again and first != other
    assert len(set(first[0])) > 1  # a random model sampling at temperature 1 does not repeat itself


def test_batched_greedy_equals_one_at_a_time(vision):
    params = SamplingParams(max_new_tokens=10, n=2)
    # one prompt without an image rides in the same batch as those with one
    prompts = _prompts()
    prompts[2] = ChatPrompt(messages=[{"role": "user", "content": QUESTIONS[2]}])
    batched = vision.generate(prompts, params)
    single = HFVisionGenerator(vision.model, vision.processor, batch_size=1).generate(prompts, params)
    assert batched == single
    assert all(samples[0] == samples[1] for samples in batched)  # greedy: n identical results
    assert any(samples[0] for samples in batched)


def _transformers_own_sampling(model, tokenizer, inputs, params: SamplingParams):
    """What generate() samples on its own: prompts repeated n times, its own temperature and top-p."""
    config = GenerationConfig(
        max_new_tokens=params.max_new_tokens, do_sample=True, temperature=params.temperature, top_p=params.top_p,
        top_k=0, num_return_sequences=params.n, eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(params.seed)  # the first batch's seed
    with torch.no_grad(), explicit_generation_config(model):
        output = model.generate(**inputs, generation_config=config)
    return tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _by_prompt(texts, order, n):
    grouped = [[] for _ in order]
    for row, text in enumerate(texts):
        grouped[order[row // n]].append(text)
    return grouped


def test_vision_sampling_draws_what_transformers_draws(vision):
    """One prompt pass shared by the n samples and the values-only-sort top-p change no sampled token."""
    params = SamplingParams(max_new_tokens=10, n=3, do_sample=True, temperature=0.7, top_p=0.8, seed=4)
    prompts = _prompts()
    got = vision.generate(prompts, params)
    processor, tokenizer = vision.processor, vision.processor.tokenizer
    rendered = render_vision_prompts(processor, [p.messages for p in prompts], [True] * len(prompts))
    (order,) = batches_by_length([len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]], 4)
    inputs = processor(images=[pad_to_square(prompts[i].image, mean_fill()) for i in order],
                       text=[rendered[i] for i in order], padding=True, return_tensors="pt")
    expected = _by_prompt(_transformers_own_sampling(vision.model, tokenizer, inputs, params), order, params.n)
    assert got == expected
    assert len({text for samples in got for text in samples}) > len(prompts)  # really sampled


def test_text_sampling_draws_what_transformers_draws(text_generator):
    params = SamplingParams(max_new_tokens=10, n=3, do_sample=True, temperature=0.5, top_p=0.6, seed=2)
    model, tokenizer = text_generator.model, text_generator.tokenizer
    prompts = [ChatPrompt(messages=[{"role": "user", "content": q}]) for q in QUESTIONS]
    got = text_generator.generate(prompts, params)
    rendered = render_prompts(tokenizer, [p.messages for p in prompts])
    encoded = encode_prompts(tokenizer, rendered)
    (order,) = batches_by_length([len(ids) for ids in encoded], 4)
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    inputs = {
        "input_ids": torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in order]),
        "attention_mask": torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in order]),
    }
    assert got == _by_prompt(_transformers_own_sampling(model, tokenizer, inputs, params), order, params.n)


def test_explicit_params_override_a_saved_generation_config(vision, llava_dir, tmp_path):
    odd = tmp_path / "odd-defaults"
    shutil.copytree(llava_dir, odd)
    tokenizer = vision.processor.tokenizer
    GenerationConfig(
        do_sample=True, temperature=0.01, top_k=3, repetition_penalty=50.0, no_repeat_ngram_size=1,
        max_new_tokens=2, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(odd)
    odd_generator = make_generator({"backend": "hf", "model": {"path": str(odd), "device": "cpu"}}, kind="vision")
    assert odd_generator.model.generation_config.repetition_penalty == 50.0

    images = [Image.fromarray(np.asarray(im)).resize((64, 64)) for im in _images()[:2]]
    got = odd_generator.generate(_prompts(images)[:2], SamplingParams(max_new_tokens=12))
    rendered = render_vision_prompts(vision.processor, [[{"role": "user", "content": q}] for q in QUESTIONS[:2]],
                                     [True, True])
    expected = [argmax_decode_llava(vision.model, vision.processor, p, im, 12) for p, im in zip(rendered, images)]
    assert [g[0] for g in got] == expected
    assert len(tokenizer(expected[0], add_special_tokens=False)["input_ids"]) > 2  # not the saved max_new_tokens

    # the saved defaults do change the output when generate() is left to use them
    inputs = vision.processor(images=[images[0]], text=[rendered[0]], return_tensors="pt")
    with torch.no_grad():
        raw = odd_generator.model.generate(**inputs, max_new_tokens=12)
    assert tokenizer.decode(raw[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True) != expected[0]


def test_images_reach_the_processor_padded_to_square_with_the_clip_mean(vision, monkeypatch):
    seen = []
    original_call = LlavaProcessor.__call__

    def spy(self, images=None, text=None, **kwargs):
        seen.extend(image.copy() for image in images or [])
        return original_call(self, images=images, text=text, **kwargs)

    monkeypatch.setattr(LlavaProcessor, "__call__", spy)
    wide = Image.new("RGB", (80, 40), (250, 0, 0))
    vision.generate([ChatPrompt(messages=[{"role": "user", "content": "What is it?"}], image=wide)],
                    SamplingParams(max_new_tokens=2))
    assert [im.size for im in seen] == [(80, 80)]
    assert seen[0].getpixel((0, 0)) == mean_fill() and seen[0].getpixel((40, 40)) == (250, 0, 0)

    seen.clear()
    vision.generate(_prompts(), SamplingParams(max_new_tokens=2))
    assert sorted(im.size for im in seen) == [(64, 64), (70, 70), (80, 80), (90, 90)]

    seen.clear()
    HFVisionGenerator(vision.model, vision.processor, pad_square=False).generate(
        _prompts()[:2], SamplingParams(max_new_tokens=2)
    )
    assert sorted(im.size for im in seen) == [(40, 90), (80, 50)]


def test_vision_assistant_prefix_continues_the_answer(vision):
    rendered = render_vision_prompts(
        vision.processor, [[{"role": "user", "content": "What is it?"}]], [True], ["The answer is"]
    )
    assert rendered == ["USER: <image>\nWhat is it? ASSISTANT: The answer is"]
    image = Image.fromarray(np.asarray(_images()[2]))  # already square, so no padding differs
    got = vision.generate(
        [ChatPrompt(messages=[{"role": "user", "content": "What is it?"}], image=image, assistant_prefix="The answer is")],
        SamplingParams(max_new_tokens=8),
    )
    assert got == [[argmax_decode_llava(vision.model, vision.processor, rendered[0], image, 8)]]


def test_vision_stop_strings_cut_the_text(vision):
    full = vision.generate(_prompts()[:2], SamplingParams(max_new_tokens=12))
    stop = full[0][0][3:5]
    assert stop
    cut = vision.generate(_prompts()[:2], SamplingParams(max_new_tokens=12, stop=(stop,)))
    assert cut[0][0] == full[0][0][: full[0][0].index(stop)]
    assert stop not in cut[1][0]


@torch.no_grad()
def _argmax_decode_text(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    ids = torch.tensor([encode_prompts(tokenizer, [prompt])[0]])
    start = ids.shape[1]
    for _ in range(max_new_tokens):
        next_id = model(input_ids=ids).logits[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
        if int(next_id) in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")):
            break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True)


def test_text_generator_honours_the_assistant_prefix(text_generator):
    assert isinstance(text_generator, HFTextGenerator)
    tokenizer = text_generator.tokenizer
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTIONS[1]}]
    prefix = "The occluded object is"
    prompts = [ChatPrompt(messages=messages, assistant_prefix=prefix), ChatPrompt(messages=messages)]
    got = text_generator.generate(prompts, SamplingParams(max_new_tokens=8, n=2))
    template = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected_with = _argmax_decode_text(text_generator.model, tokenizer, template + prefix, 8)
    expected_without = _argmax_decode_text(text_generator.model, tokenizer, template, 8)
    assert got == [[expected_with] * 2, [expected_without] * 2]
    assert expected_with != expected_without
    assert text_generator.describe()["kind"] == "text" and text_generator.describe()["backend"] == "hf"


def test_text_generator_answers_with_exactly_one_of_the_choices(text_generator):
    choices = [" dog", " dog bowl", " red kite", " none"]  # " dog" is a prefix of " dog bowl"
    prompts = [ChatPrompt(messages=[{"role": "user", "content": q}], assistant_prefix="Answer:", choices=choices)
               for q in QUESTIONS]
    allowed = {choice.strip() for choice in choices}
    greedy = text_generator.generate(prompts, SamplingParams(max_new_tokens=8))
    assert all(samples[0].strip() in allowed for samples in greedy)
    sampled = text_generator.generate(prompts, SamplingParams(max_new_tokens=8, n=6, do_sample=True, seed=1))
    picked = {text.strip() for samples in sampled for text in samples}
    assert picked <= allowed and len(picked) > 1
    with pytest.raises(ValueError, match="no choice fits in 1 tokens"):
        text_generator.generate(prompts[:1], SamplingParams(max_new_tokens=1))
    with pytest.raises(ValueError, match="every prompt of a call has choices or none"):
        text_generator.generate([prompts[0], ChatPrompt(messages=prompts[1].messages)],
                                SamplingParams(max_new_tokens=4))


def test_vision_generator_refuses_choices(vision):
    prompt = ChatPrompt(messages=[{"role": "user", "content": "What is it?"}], image=_images()[0], choices=[" dog"])
    with pytest.raises(NotImplementedError, match="prompt 0 has choices"):  # UnsupportedFeatureError is one
        vision.generate([prompt], SamplingParams(max_new_tokens=4))


def test_text_generator_refuses_images(text_generator):
    with pytest.raises(ValueError, match="prompt 0 has an image"):
        text_generator.generate([ChatPrompt(messages=[{"role": "user", "content": "x"}], image=_images()[0])],
                                SamplingParams(max_new_tokens=2))


def test_make_generator_rejects_unknown_keys_and_backends(llava_dir):
    with pytest.raises(ValueError, match="unknown keys \\['batchsize'\\]"):
        make_generator({"backend": "hf", "model": {"path": str(llava_dir)}, "batchsize": 4}, kind="vision")
    with pytest.raises(ValueError, match="unknown generator backend 'vllm'"):
        make_generator({"backend": "vllm", "model": {"path": str(llava_dir)}}, kind="vision")


def test_generators_declare_their_features(text_generator, vision):
    assert text_generator.features == frozenset({"choices", "lines", "score_choices"})
    assert vision.features == frozenset()
    assert isinstance(text_generator, Generator) and isinstance(vision, Generator)


def test_text_generator_lines_decode_under_the_line_constraint(text_generator):
    """ChatPrompt.lines gives what generate_texts gives under a LineSequenceConstraint directly."""
    from groundflow.generate.backends import LineChoices
    from groundflow.generate.constrained import LineSequenceConstraint
    from groundflow.generate.text import generate_texts

    allowed = [["a dog -> dog", "the red kite -> kite", "gray blocks -> blocks"],
               ["an object -> object", "the animal -> animal"]] * 2
    lines = [LineChoices(allowed=tuple(a), end_marker="<end>", min_lines=1, max_lines=2) for a in allowed]
    prompts = [ChatPrompt(messages=[{"role": "user", "content": q}], assistant_prefix="<begin>\n", lines=l)
               for q, l in zip(QUESTIONS, lines)]
    got = text_generator.generate(prompts, SamplingParams(max_new_tokens=max(l.byte_budget() for l in lines)))
    model, tokenizer = text_generator.model, text_generator.tokenizer
    constraint = LineSequenceConstraint(tokenizer, allowed, context="<begin>\n", end_marker="<end>",
                                        max_lines=2, min_lines=1)
    budgets = [constraint.token_budget(i) for i in range(len(allowed))]
    assert all(l.byte_budget() >= b for l, b in zip(lines, budgets))  # the tokenizer-free bound holds
    rendered = render_prompts(tokenizer, [p.messages for p in prompts], "<begin>\n")
    expected = generate_texts(model, tokenizer, rendered, max_new_tokens=max(budgets),
                              batch_size=text_generator.batch_size, prefix_allowed_tokens_fn=constraint)
    assert got == expected
    for answer, allowed_lines in zip(got, allowed):
        body = answer[0].split("<end>")[0].splitlines()
        assert 1 <= len(body) <= 2 and all(line.split(". ", 1)[1] in allowed_lines for line in body)


def test_text_generator_scores_choices_as_the_lm_scorer_does(text_generator, vision):
    from groundflow.generate.backends import UnsupportedFeatureError
    from groundflow.generate.text import score_choices

    prompts = [ChatPrompt(messages=[{"role": "user", "content": q}], assistant_prefix="Type:") for q in QUESTIONS]
    choices = [[" object", " animal", " dog bowl"]] * len(prompts)
    got = text_generator.score_choices(prompts, choices, normalize="mean")
    rendered = render_prompts(text_generator.tokenizer, [p.messages for p in prompts], "Type:")
    expected = score_choices(text_generator.model, text_generator.tokenizer, rendered, choices, batch_size=1,
                             normalize="mean")
    assert len(got) == len(prompts) and all(len(row) == 3 for row in got)
    for row, expected_row in zip(got, expected):
        assert row == pytest.approx(expected_row, abs=1e-4)
    assert len({tuple(row) for row in got}) > 1  # the prompts matter
    with pytest.raises(UnsupportedFeatureError, match="does not score choices"):
        vision.score_choices(prompts, choices)
