import numpy as np
import pytest
import torch
from PIL import Image

from groundflow.models.llava import (
    LLAVA_15_CHAT_TEMPLATE,
    build_tiny_llava,
    load_llava,
    mean_fill,
    pad_to_square,
)
from groundflow.models.spec import ModelSpec

QUESTIONS = [
    "What is it?",
    "What might the object occluded by the gray blocks be? Let's think step by step.",
]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    path = build_tiny_llava(tmp_path_factory.mktemp("llava") / "tiny-llava", seed=0, texts=QUESTIONS)
    model, processor = load_llava(ModelSpec(str(path), device="cpu"))
    return model, processor


def _prompt(processor, question):
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def _images():
    rng = np.random.default_rng(0)
    return [
        pad_to_square(Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8))),
        pad_to_square(Image.fromarray(rng.integers(0, 256, (90, 40, 3), dtype=np.uint8))),
    ]


def test_loaded_model_is_a_real_llava(llava):
    model, processor = llava
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    assert not model.training
    assert processor.tokenizer.padding_side == "left"
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.image_token_id == image_token_id == processor.image_token_id
    assert model.config.vision_feature_layer == -2
    assert model.config.vision_feature_select_strategy == "default"
    assert processor.chat_template == LLAVA_15_CHAT_TEMPLATE


def test_chat_template_is_llava_15(llava):
    _, processor = llava
    assert _prompt(processor, "What is it?") == "USER: <image>\nWhat is it? ASSISTANT:"


def test_batched_generation_with_prompts_of_different_lengths(llava):
    model, processor = llava
    prompts = [_prompt(processor, q) for q in QUESTIONS]
    inputs = processor(images=_images(), text=prompts, padding=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)
    # (64 / 16)^2 patches; the CLS token is dropped by the "default" strategy
    assert (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist() == [16, 16]
    # left padding: the shorter prompt is padded at its start, both end at the last column
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][:, -1].tolist() == [1, 1]

    max_new_tokens = 5
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    width = inputs["input_ids"].shape[1]
    assert out.shape[0] == 2 and width < out.shape[1] <= width + max_new_tokens
    assert torch.equal(out[:, :width], inputs["input_ids"])
    texts = processor.batch_decode(out[:, width:], skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)

    # padding must not change what a prompt generates
    for index in range(2):
        single = processor(images=[_images()[index]], text=[prompts[index]], return_tensors="pt")
        with torch.inference_mode():
            alone = model.generate(**single, max_new_tokens=max_new_tokens, do_sample=False)
        new_alone = alone[0, single["input_ids"].shape[1] :].tolist()
        assert out[index, width : width + len(new_alone)].tolist() == new_alone


def test_pad_to_square_wide_image_centred_with_mean_fill():
    image = Image.new("RGB", (80, 50), (200, 10, 10))
    square = pad_to_square(image)
    assert square.size == (80, 80)
    assert mean_fill() == (122, 116, 104)
    pixels = np.asarray(square)
    assert (pixels[:15] == (122, 116, 104)).all()
    assert (pixels[15:65] == (200, 10, 10)).all()
    assert (pixels[65:] == (122, 116, 104)).all()


def test_pad_to_square_tall_image_and_custom_fill():
    image = Image.new("RGB", (41, 90), (0, 255, 0))
    square = pad_to_square(image, fill=(1, 2, 3))
    assert square.size == (90, 90)
    pixels = np.asarray(square)
    assert (pixels[:, :24] == (1, 2, 3)).all()  # (90 - 41) // 2 = 24
    assert (pixels[:, 24:65] == (0, 255, 0)).all()
    assert (pixels[:, 65:] == (1, 2, 3)).all()


def test_pad_to_square_leaves_square_images_and_handles_greyscale():
    image = Image.new("RGB", (32, 32), (5, 6, 7))
    assert pad_to_square(image) is image
    grey = pad_to_square(Image.new("L", (10, 4), 200))
    assert grey.mode == "L" and grey.size == (10, 10)
    assert np.asarray(grey)[0, 0] == 122 and np.asarray(grey)[3, 0] == 200
