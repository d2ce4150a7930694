"""LLaVA: the tiny random LLaVA of the embedded default, the loader, and square padding.

`load_llava` takes a hub id ("llava-hf/llava-1.5-7b-hf") or a local folder. The tiny builder
saves a real LlavaForConditionalGeneration (CLIP vision tower, MLP projector, Llama text model)
and a LlavaProcessor with LLaVA-1.5's chat template, so the demo runs the same loading,
prompting and generation code as the real model.

`compose_llava` joins a language model, a CLIP vision tower and an `mlp2x_gelu` projector (random,
or the original release's `mm_projector.bin`) into that HF format: CINGS' base, and CVC's
LLaVA-1.5 stage-1 state (Vicuna-7B-v1.5 + CLIP ViT-L/14-336 + the pretrained projector).

LLaVA-1.5 trains on images padded to a square with the CLIP mean colour, while the HF processor
resizes and centre-crops: an object near the border (e.g. an occluded entity) can be cropped out.
Callers pad with `pad_to_square` before handing images to the processor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from groundflow.models.spec import ModelSpec, seeded
from groundflow.models.tokenizers import build_tokenizer, ensure_pad_token

IMAGE_TOKEN = "<image>"

# The chat template shipped with llava-hf/llava-1.5-*-hf: "USER: <image>\n{text} ASSISTANT:".
LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# CLIP's normalisation mean, the colour LLaVA-1.5 pads with (expand2square).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

TINY_IMAGE_SIZE = 64
TINY_PATCH_SIZE = 16


def tiny_clip_vision_config(image_size: int = TINY_IMAGE_SIZE, patch_size: int = TINY_PATCH_SIZE) -> CLIPVisionConfig:
    """The vision tower of every tiny LLaVA, alone or inside one."""
    return CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )


def build_tiny_llava(out_dir: str | os.PathLike, seed: int = 0, texts: Iterable[str] = (), *,
                     image_size: int = TINY_IMAGE_SIZE, patch_size: int = TINY_PATCH_SIZE) -> Path:
    """Save a randomly initialised LlavaForConditionalGeneration and its processor to `out_dir`.

    image_size / patch_size: 336 / 14 gives LLaVA-1.5's 576 image tokens per image (benchmarks that
    need the real sequence layout); the default 64 / 16 gives 16."""
    out_dir = Path(out_dir)
    build_tokenizer("llama", out_dir, texts=texts)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise AssertionError(f"tokenizer lacks the {IMAGE_TOKEN} token")

    vision_config = tiny_clip_vision_config(image_size, patch_size)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    num_patches = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=num_patches,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    with seeded(seed):
        model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=list(CLIP_IMAGE_MEAN),
        image_std=list(CLIP_IMAGE_STD),
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_15_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
    )
    processor.save_pretrained(out_dir)
    return Path(out_dir)


def load_llava(spec: ModelSpec):
    """(model, processor) for a LLaVA named by `spec`, in eval mode, tokenizer padding on the left.

    Left padding keeps every prompt's last token at the end of the batch row, which batched
    generation with a decoder-only model needs.
    """
    processor = AutoProcessor.from_pretrained(spec.path)
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    model = LlavaForConditionalGeneration.from_pretrained(spec.path, dtype=spec.torch_dtype())
    model.to(spec.torch_device())
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


def mean_fill(image_mean: Sequence[float] = CLIP_IMAGE_MEAN) -> tuple[int, int, int]:
    """An image processor's normalisation mean as an RGB colour, as LLaVA-1.5 pads with."""
    return tuple(int(channel * 255) for channel in image_mean)  # type: ignore[return-value]


def pad_to_square(image: Image.Image, fill: Sequence[int] | None = None) -> Image.Image:
    """Pad `image` to a square with `fill`, the original centred (LLaVA-1.5's expand2square).

    The default fill is the CLIP mean colour, which LLaVA-1.5's training data used. A square
    image is returned unchanged.
    """
    width, height = image.size
    if width == height:
        return image
    colour = tuple(fill) if fill is not None else mean_fill()
    if image.mode == "L" or image.mode == "I" or image.mode == "F":
        colour = colour[0]
    side = max(width, height)
    square = Image.new(image.mode, (side, side), colour)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


# ---------------------------------------------------------------- LLaVA from a trained LM

# A Llama-3.1 chat template over content parts (LLaVA-NeXT's `llava_llama_3` layout): the image
# goes as "<image>\n" before the text of its turn, every message is trimmed, the system block
# carries the same date lines the text LM was trained with.
LLAMA3_LLAVA_CHAT_TEMPLATE = (
    "{%- macro text(message) -%}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = text(messages[0]) %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + text(message) + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# LLaVA-1.5's stage-1 `--version plain`: the prompt is the image alone (the human text is dropped),
# the target is the caption followed by a newline.
LLAVA_PLAIN_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- for part in message['content'] if part['type'] == 'image' %}{{ '<image>' }}{%- endfor %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- for part in message['content'] if part['type'] == 'text' %}{{ part['text'] | trim }}{%- endfor %}{{ '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
)

LLAVA_CHAT_TEMPLATES = {"llama3": LLAMA3_LLAVA_CHAT_TEMPLATE, "plain": LLAVA_PLAIN_CHAT_TEMPLATE}


def build_tiny_clip_vision(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A random CLIP vision tower (CLIPVisionModel + CLIPImageProcessor), saved like
    `openai/clip-vit-large-patch14-336` is read by `compose_llava`."""
    from transformers import CLIPVisionModel

    out_dir = Path(out_dir)
    config = tiny_clip_vision_config()
    with seeded(seed):
        model = CLIPVisionModel(config)
    model.save_pretrained(out_dir)
    CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        do_center_crop=True,
        image_mean=list(CLIP_IMAGE_MEAN),
        image_std=list(CLIP_IMAGE_STD),
    ).save_pretrained(out_dir)
    return out_dir


# The keys of LLaVA-1.5's stage-1 `mm_projector.bin` (`mlp2x_gelu`: Linear, GELU, Linear) and the
# HF LlavaMultiModalProjector's names for them.
PROJECTOR_KEYS = {
    "model.mm_projector.0.weight": "linear_1.weight",
    "model.mm_projector.0.bias": "linear_1.bias",
    "model.mm_projector.2.weight": "linear_2.weight",
    "model.mm_projector.2.bias": "linear_2.bias",
}


class ProjectorFileError(ValueError):
    """A projector file that cannot join this LM and vision tower; str(error) names file and key."""


def load_projector_state(path: str | os.PathLike, *, vision_hidden_size: int, text_hidden_size: int) -> dict:
    """The `mlp2x_gelu` projector weights of an original LLaVA release file, under the HF names.

    `path` is a torch state dict (`mm_projector.bin`, read with `weights_only=True`: a file that
    needs unpickling of arbitrary objects is refused, never executed) or a `.safetensors` file. Keys
    and shapes are checked against the vision tower's hidden size (the projector's input) and the
    LM's (its output); a mismatch is refused naming the file and the key.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ProjectorFileError(f"{path}: no projector file there")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ProjectorFileError(
                f"{path}: refused, it is not a plain tensor state dict (weights_only load failed: {error})"
            ) from error
    if not isinstance(state, dict):
        raise ProjectorFileError(f"{path}: holds a {type(state).__name__}, not a state dict")
    unknown = sorted(set(state) - set(PROJECTOR_KEYS))
    if unknown:
        raise ProjectorFileError(f"{path}: key {unknown[0]!r} is not an mlp2x_gelu projector key {sorted(PROJECTOR_KEYS)}")
    expected = {
        "model.mm_projector.0.weight": (text_hidden_size, vision_hidden_size),
        "model.mm_projector.0.bias": (text_hidden_size,),
        "model.mm_projector.2.weight": (text_hidden_size, text_hidden_size),
        "model.mm_projector.2.bias": (text_hidden_size,),
    }
    for key, shape in expected.items():
        if key not in state:
            raise ProjectorFileError(f"{path}: key {key!r} is missing")
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ProjectorFileError(
                f"{path}: key {key!r} has shape {found}, expected {shape} "
                f"(vision hidden size {vision_hidden_size}, LM hidden size {text_hidden_size})"
            )
    return {PROJECTOR_KEYS[key]: state[key] for key in PROJECTOR_KEYS}


def composition_chat_template(chat_format: str) -> str:
    """The chat template a composed LLaVA's processor gets: one of LLAVA_CHAT_TEMPLATES, or a
    conversation format of groundflow.train.chat_formats (e.g. "vicuna_v1")."""
    from groundflow.train.chat_formats import CONVERSATION_FORMATS

    templates = {**LLAVA_CHAT_TEMPLATES, **CONVERSATION_FORMATS}
    if chat_format not in templates:
        raise ValueError(f"unknown chat format {chat_format!r} for a composed LLaVA; one of {sorted(templates)}")
    return templates[chat_format]


def compose_llava(
    lm_path: str | os.PathLike,
    vision_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    projector_path: str | os.PathLike | None = None,
    chat_format: str = "llama3",
    pad_token: str | None = None,
    pad_vocab_to_multiple_of: int | None = None,
    vision_feature_layer: int = -2,
    seed: int = 0,
    dtype=None,
) -> Path:
    """A LLaVA-1.5 whose language model is the causal LM at `lm_path` (weights and tokenizer) and
    whose vision tower is the CLIP at `vision_path`, joined by an `mlp2x_gelu` projector
    (LLaVA-1.5: penultimate CLIP layer, CLS dropped); saved to `out_dir` in HF format
    (LlavaForConditionalGeneration + LlavaProcessor) with the chat template `chat_format` names.

    The projector is read from `projector_path` (an original release's `mm_projector.bin`, see
    `load_projector_state`), or, without one, initialised at random from `seed` (CINGS trains it).

    The tokenizer gains "<image>" when it lacks it (that embedding row is never read: image
    features replace it). `pad_token` is added as the pad token when given (llava-hf's conversion
    adds "<pad>"); otherwise a tokenizer without one gets `<|finetune_right_pad_id|>` where the
    vocabulary has it, else eos. `pad_vocab_to_multiple_of` rounds the embedding matrix up as the
    llava-hf conversion does (64: Vicuna's 32000 + 2 -> 32064), its new rows drawn around the mean
    embedding; without it the matrix grows only by the rows added and they start at zero-mean
    random. The model is assembled on the meta device and only the given weights are
    materialised, so an 8B LM is never held twice.
    """
    import torch
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, CLIPVisionModel
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from groundflow.io.artifacts import atomic_directory

    chat_template = composition_chat_template(chat_format)
    tokenizer = AutoTokenizer.from_pretrained(lm_path)
    lm = AutoModelForCausalLM.from_pretrained(lm_path, dtype=dtype)
    if getattr(lm.config, "model_type", None) != "llama":
        raise ValueError(f"{lm_path}: LLaVA composition supports Llama language models, not {lm.config.model_type!r}")
    vision = CLIPVisionModel.from_pretrained(vision_path, dtype=dtype)
    image_processor = CLIPImageProcessor.from_pretrained(vision_path)
    projector_state = None
    if projector_path is not None:
        # Checked before any resizing: the file must fit the parts as they were released.
        projector_state = load_projector_state(
            projector_path, vision_hidden_size=vision.config.hidden_size, text_hidden_size=lm.config.hidden_size
        )

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if pad_token is not None:
        tokenizer.add_special_tokens({"pad_token": pad_token})
    else:
        ensure_pad_token(tokenizer)
    if pad_vocab_to_multiple_of is not None:
        lm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_vocab_to_multiple_of, mean_resizing=True)
    elif len(tokenizer) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    vision_config = vision.config
    num_patches = (vision_config.image_size // vision_config.patch_size) ** 2
    text_config = lm.config
    text_config.pad_token_id = tokenizer.pad_token_id
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=num_patches,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    with seeded(seed):
        projector = LlavaMultiModalProjector(config).to(lm.dtype)
    if projector_state is not None:
        projector.load_state_dict({k: v.to(lm.dtype) for k, v in projector_state.items()}, strict=True)
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True, assign=True)
    model.lm_head.load_state_dict(lm.lm_head.state_dict(), strict=True, assign=True)
    model.model.vision_tower.load_state_dict(vision.state_dict(), strict=True, assign=True)
    model.model.multi_modal_projector.load_state_dict(projector.state_dict(), strict=True, assign=True)
    left_on_meta = [name for name, p in model.state_dict().items() if p.is_meta]
    if left_on_meta:
        raise AssertionError(f"weights not filled in: {left_on_meta[:5]}")
    for key in ("bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(lm.generation_config, key, None))
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default",
        chat_template=chat_template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
    )
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out_dir)


def write_projector_file(
    out_path: str | os.PathLike, *, vision_hidden_size: int, text_hidden_size: int, seed: int = 0, dtype=None
) -> Path:
    """A random `mlp2x_gelu` projector saved as the original LLaVA release ships its stage-1
    `mm_projector.bin`: `torch.save` of a plain state dict under the `model.mm_projector.*` keys."""
    import torch

    from groundflow.io.artifacts import atomic_path

    with seeded(seed):
        first = torch.nn.Linear(vision_hidden_size, text_hidden_size)
        second = torch.nn.Linear(text_hidden_size, text_hidden_size)
    tensors = {
        "model.mm_projector.0.weight": first.weight, "model.mm_projector.0.bias": first.bias,
        "model.mm_projector.2.weight": second.weight, "model.mm_projector.2.bias": second.bias,
    }
    state = {key: tensor.detach().to(dtype or torch.float16).contiguous() for key, tensor in tensors.items()}
    with atomic_path(out_path) as tmp:
        torch.save(state, tmp)
    return Path(out_path)


def build_tiny_projector(
    out_path: str | os.PathLike, lm_path: str | os.PathLike, vision_path: str | os.PathLike, seed: int = 0
) -> Path:
    """A tiny stand-in for the stage-1 `mm_projector.bin`, sized to join the LM at `lm_path` and the
    CLIP at `vision_path` (their config.json hidden sizes)."""
    from transformers import AutoConfig

    text_hidden = AutoConfig.from_pretrained(lm_path).hidden_size
    vision_config = AutoConfig.from_pretrained(vision_path)
    vision_hidden = getattr(vision_config, "vision_config", vision_config).hidden_size
    return write_projector_file(out_path, vision_hidden_size=vision_hidden, text_hidden_size=text_hidden, seed=seed)


# LLaVA-1.5 as llava-hf converts it: "<image>" and "<pad>" added, the vocabulary padded to a
# multiple of 64 (Vicuna's 32000 -> 32064), penultimate CLIP layer, CLS dropped.
LLAVA_15_PAD_TOKEN = "<pad>"
LLAVA_15_VOCAB_MULTIPLE = 64


def compose_llava_base(
    *, lm: dict, vision: dict, projector_path: str | os.PathLike, out_dir: str | os.PathLike,
    chat_format: str = "vicuna_v1",
) -> Path:
    """LLaVA-1.5's stage-1 state (where the official stage-2 `finetune.sh` starts) in HF format:
    the LM and CLIP model entries (`{path, dtype}`, hub ids or folders) joined by the pretrained
    projector file, tokenizer and embeddings as the llava-hf conversion makes them, and LLaVA-1.5's
    stage-2 conversation format (`vicuna_v1`) as the chat template."""
    lm_spec, vision_spec = ModelSpec.from_config(lm), ModelSpec.from_config(vision)
    return compose_llava(
        lm_spec.path,
        vision_spec.path,
        out_dir,
        projector_path=projector_path,
        chat_format=chat_format,
        pad_token=LLAVA_15_PAD_TOKEN,
        pad_vocab_to_multiple_of=LLAVA_15_VOCAB_MULTIPLE,
        vision_feature_layer=-2,
        dtype=_stored_or(lm_spec),
    )


def _stored_or(spec: ModelSpec):
    """The dtype a composition loads in: as stored for "auto" (a 7B LM is not doubled to fp32 on a
    CPU job), else the one the entry names."""
    return "auto" if spec.dtype == "auto" else spec.torch_dtype()
