"""Batched vision-language generation with LLaVA (LlavaForConditionalGeneration) and Qwen2.5-VL.

The same rules as text generation (groundflow.generate.text) hold: prompts batched by length with
left padding, KV cache, sampling parameters only from the arguments (never the checkpoint's
generation_config), seeded per batch, only the new text returned, cut at stop strings. The n
samples of a prompt share its one prompt pass (`generate_sharing_prompts`): its image is encoded
once and its cache repeated, for LLaVA's 1-D positions and Qwen's multimodal rotary ones alike.

The processor does the model's own image work: LLaVA's expands `<image>` to a fixed number of
patch tokens; Qwen2.5-VL's resizes each image within its pixel budget and expands
`<|image_pad|>` to that image's grid (`image_grid_thw`), so its prompts differ in length by image.

One more rule is particular to LLaVA-1.5: it trains on images padded to a square with the CLIP mean
colour, while the HF processor resizes and centre-crops, which can cut an object near the border
(an occluded entity, say) out of the picture. Images are therefore padded to square before the
processor sees them, as training did (`pad_square`; off for Qwen, which takes any aspect).

Prompts are rendered in a named conversation format (groundflow.train.chat_formats), the same
registry training renders with, so sampling can use the layout a model was trained in rather than
whatever its processor ships.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from PIL import Image
from transformers import LogitsProcessorList

from groundflow.generate.sampling import sampling_warpers
from groundflow.generate.text import (
    batches_by_length,
    cut_at_stop_strings,
    explicit_generation_config,
    generate_sharing_prompts,
    sampling_generation_config,
    stop_token_ids,
)
from groundflow.models.llava import CLIP_IMAGE_MEAN, IMAGE_TOKEN, mean_fill, pad_to_square
from groundflow.train.chat_formats import MODEL_FORMAT, chat_template_for

Message = dict[str, str]


def content_part_messages(messages: Sequence[Message], with_image: bool) -> list[dict]:
    """Plain-text chat messages in the processor's content-part format.

    With `with_image`, one image part goes before the text of the first user turn, which is where
    LLaVA-1.5 puts it ("USER: <image>\\n{question} ASSISTANT:"). That turn's text is stripped, as
    training converts an image turn (train.conversations.to_chat_messages), so a trained model is
    asked as it was taught.
    """
    converted: list[dict] = []
    image_placed = not with_image
    for message in messages:
        parts: list[dict] = []
        text = message["content"]
        if not image_placed and message["role"] == "user":
            parts.append({"type": "image"})
            image_placed = True
            text = text.strip()
        parts.append({"type": "text", "text": text})
        converted.append({"role": message["role"], "content": parts})
    if not image_placed:
        raise ValueError("a prompt with an image needs a user turn to carry it")
    return converted


def render_vision_prompts(
    processor,
    messages_list: Sequence[Sequence[Message]],
    with_images: Sequence[bool],
    assistant_prefixes: Sequence[str] | None = None,
    *,
    conversation_format: str = MODEL_FORMAT,
) -> list[str]:
    """Prompt strings in `conversation_format`, ending inside the assistant's turn.

    `conversation_format` names a format of `groundflow.train.chat_formats` (the one training
    renders with), "model" being the processor's own chat template. A non-empty assistant prefix is rendered as the start of the assistant's message (the
    template's own spacing, e.g. "ASSISTANT: The answer is"), the way vLLM's
    `continue_final_message` renders it, so both backends see the same prompt.
    """
    prefixes = list(assistant_prefixes) if assistant_prefixes is not None else [""] * len(messages_list)
    if not (len(messages_list) == len(with_images) == len(prefixes)):
        raise ValueError(
            f"{len(messages_list)} message lists, {len(with_images)} image flags, {len(prefixes)} prefixes"
        )
    template = chat_template_for(conversation_format)
    options = {} if template is None else {"chat_template": template}
    rendered = []
    for messages, with_image, prefix in zip(messages_list, with_images, prefixes):
        conversation = content_part_messages(messages, with_image)
        if prefix:
            conversation.append({"role": "assistant", "content": [{"type": "text", "text": prefix}]})
            text = processor.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=False, continue_final_message=True, **options
            )
        else:
            text = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True, **options)
        rendered.append(text)
    return rendered


def prepare_image(image: Image.Image, *, pad_square: bool, fill: Sequence[int]) -> Image.Image:
    """RGB, and padded to a square with `fill` when `pad_square` (LLaVA-1.5's expand2square)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return pad_to_square(image, fill=fill) if pad_square else image


@contextlib.contextmanager
def _left_padding(tokenizer) -> Iterator[None]:
    saved = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = saved


@torch.inference_mode()
def generate_vision_texts(
    model,
    processor,
    prompts: Sequence[str],
    images: Sequence[Image.Image | None],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    stop_strings: Sequence[str] | None = None,
    pad_square: bool = True,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
) -> list[list[str]]:
    """Generate `num_return_sequences` continuations of each (prompt, image); only the new text.

    Each prompt holds the processor's image token exactly once when its image is given and not at
    all when it is None. Output order follows `prompts`; sampling is seeded per batch from `seed`.
    """
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    if not prompts:
        return []
    tokenizer = processor.tokenizer
    image_token = getattr(processor, "image_token", IMAGE_TOKEN)
    for index, (prompt, image) in enumerate(zip(prompts, images)):
        expected = 0 if image is None else 1
        if prompt.count(image_token) != expected:
            raise ValueError(
                f"prompt {index} holds {prompt.count(image_token)} {image_token} tokens but has "
                f"{expected} image(s): {prompt[:80]!r}"
            )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    fill = mean_fill(getattr(processor.image_processor, "image_mean", None) or CLIP_IMAGE_MEAN)
    config = sampling_generation_config(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_return_sequences=num_return_sequences,
        stop_strings=stop_strings,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
        repetition_penalty=repetition_penalty,
    )
    warpers = sampling_warpers(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k)
    # Text length orders the batches: exact for LLaVA, whose every image expands to the same number
    # of tokens; close for Qwen, whose images of one source (one pixel budget) differ by a few.
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    results: list[list[str]] = [[] for _ in prompts]
    for batch_number, batch in enumerate(batches_by_length(lengths, batch_size)):
        batch_images = [
            prepare_image(images[i], pad_square=pad_square, fill=fill) for i in batch if images[i] is not None
        ]
        with _left_padding(tokenizer):
            inputs = processor(
                images=batch_images or None,
                text=[prompts[i] for i in batch],
                padding=True,
                return_tensors="pt",
            )
        inputs = inputs.to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        width = inputs["input_ids"].shape[1]
        torch.manual_seed(seed + batch_number)
        with explicit_generation_config(model):
            output = generate_sharing_prompts(
                model,
                inputs,
                generation_config=config,
                logits_processor=LogitsProcessorList(warpers),
                tokenizer=tokenizer if stop_strings else None,
            )
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        for row, text in enumerate(texts):
            results[batch[row // num_return_sequences]].append(cut_at_stop_strings(text, stop_strings))
    return results
