"""Qwen2.5-VL: the tiny randomly initialised stand-in of the embedded default, and its loader.

The tiny model is a real `Qwen2_5_VLForConditionalGeneration` (windowed ViT with 2x2 patch merging,
M-RoPE text decoder) with a byte-level BPE fitted to the method's texts, Qwen's special tokens at
work (`<|im_start|>`, `<|im_end|>`, `<|vision_start|>`, `<|image_pad|>`, ...) and a chat template
of ours in Qwen2.5-VL's layout (a default system turn when none is given, images as
`<|vision_start|><|image_pad|><|vision_end|>` where the content lists them). It is saved with
save_pretrained and loads through `load_qwen_vl`, which takes a hub id of the real family alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from groundflow.models.spec import ModelSpec

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2.5-VL-Instruct's layout, written for this project: string contents render as they are,
# content lists render images/videos as vision blocks and texts in order; no tool calling.
QWEN_VL_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

# Images of the tiny model: resized (aspect kept) to between 4x4 and 8x8 patches of 14 px, i.e.
# 4 to 16 image tokens after the 2x2 merge; the real model's processor takes the checkpoint's own.
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112


def build_qwen_tokenizer(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE with Qwen2's special tokens and conventions: no BOS, EOS `<|im_end|>` (the
    Instruct tokenizer's), pad `<|endoftext|>`; fitted to `texts` plus the shared base corpus."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from groundflow.models.tokenizers import _byte_level_bpe, corpus_lines

    tok = _byte_level_bpe(corpus_lines(texts), vocab_size, QWEN_SPECIALS)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=32768)
    fast.chat_template = QWEN_VL_CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_qwen_vl(out_dir: str | Path, seed: int = 0, texts: Iterable[str] = ()) -> Path:
    """Save a randomly initialised Qwen2_5_VLForConditionalGeneration and its processor."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from groundflow.models.spec import seeded

    out_dir = Path(out_dir)
    tokenizer = build_qwen_tokenizer(out_dir, list(texts))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    head_dim = 16
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                "mrope_section": [2, 3, 3]},  # halves of head_dim 16: t, h, w
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    assert config.text_config.hidden_size // config.text_config.num_attention_heads == head_dim
    with seeded(seed):
        model = Qwen2_5_VLForConditionalGeneration(config)
    generation = model.generation_config
    generation.bos_token_id = ids["<|endoftext|>"]
    generation.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    generation.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)

    image_processor = Qwen2VLImageProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS,
                                            patch_size=14, merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS,
                                            patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=video_processor, chat_template=QWEN_VL_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    return out_dir


def load_qwen_vl(spec: ModelSpec | dict | str):
    """(model, processor) of a Qwen2.5-VL checkpoint (local folder or hub id), in eval mode."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from groundflow.models.spec import resolve_dtype

    spec = ModelSpec.from_config(spec)
    device = spec.torch_device()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(spec.path, dtype=resolve_dtype(spec.dtype, device))
    processor = AutoProcessor.from_pretrained(spec.path)
    return model.to(device).eval(), processor
