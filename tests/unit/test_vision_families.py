"""models.vision_families: which part a parameter belongs to, family lookup by model_type and by
processor, a Qwen-style image's token count by its processor's resize rule; GWYS' SFT settings."""

import pytest
from transformers import Qwen2VLImageProcessor

from groundflow.gwys.sft import gwys_sft_settings
from groundflow.models.vision_families import (
    LLAVA,
    QWEN2_5_VL,
    image_pixel_bounds,
    image_tokens,
    processor_family,
    set_image_pixel_bounds,
    vision_family,
)
from groundflow.train.config import ALL_BUT_PAD_AND_IMAGE, ASSISTANT_ONLY, SFTConfig


@pytest.mark.parametrize("family, name, part", [
    (LLAVA, "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", "vision_tower"),
    (LLAVA, "model.multi_modal_projector.linear_1.weight", "projector"),
    (LLAVA, "model.language_model.layers.0.self_attn.q_proj.weight", "language_model"),
    (LLAVA, "lm_head.weight", "language_model"),
    (QWEN2_5_VL, "model.visual.blocks.0.attn.qkv.weight", "vision_tower"),
    (QWEN2_5_VL, "model.visual.patch_embed.proj.weight", "vision_tower"),
    (QWEN2_5_VL, "model.visual.merger.mlp.0.weight", "projector"),
    (QWEN2_5_VL, "model.language_model.layers.1.mlp.down_proj.weight", "language_model"),
    # a peft / value-model wrapper's prefixes do not change the part
    (QWEN2_5_VL, "base_model.model.backbone.model.visual.merger.ln_q.weight", "projector"),
])
def test_part_of(family, name, part):
    assert family.part_of(name) == part


def test_only_the_language_model_counts_as_it():
    assert QWEN2_5_VL.in_language_model("model.language_model.layers.0.self_attn.q_proj")
    assert not QWEN2_5_VL.in_language_model("model.visual.blocks.0.mlp.gate_proj")
    assert not QWEN2_5_VL.in_language_model("lm_head")


def test_families_by_model_type_and_by_processor():
    assert vision_family("llava") is LLAVA and vision_family("qwen2_5_vl") is QWEN2_5_VL
    assert vision_family("llama") is None and vision_family(None) is None
    assert processor_family(type("Qwen2_5_VLProcessor", (), {})()) is QWEN2_5_VL
    assert processor_family(type("LlamaTokenizerFast", (), {})()) is None
    assert QWEN2_5_VL.tokens_vary_per_image and not LLAVA.tokens_vary_per_image
    assert not QWEN2_5_VL.pad_to_square and LLAVA.pad_to_square


class _Processor:
    def __init__(self, **kwargs):
        self.image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, **kwargs)


def test_image_tokens_follow_the_resize_rule_and_the_pixel_cap():
    processor = _Processor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    # 448 x 448: a 32 x 32 patch grid, merged 2 x 2 into 256 tokens; 1000 x 500 rounds to 28s: 36 x 18
    assert image_tokens(processor, 448, 448) == 256
    assert image_tokens(processor, 1000, 500) == (1008 // 28) * (504 // 28)
    assert image_tokens(processor, 10, 10) == 4  # up to min_pixels: 56 x 56
    set_image_pixel_bounds(processor, max_pixels=401408)  # the RL cap: 512 tokens
    assert image_pixel_bounds(processor) == (56 * 56, 401408)
    assert image_tokens(processor, 4000, 3000) <= 512 < image_tokens(_Processor(), 4000, 3000)
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        set_image_pixel_bounds(processor, min_pixels=10_000, max_pixels=5_000)


def test_gwys_sft_settings_fill_the_original_mask_and_keep_the_models_template():
    settings = gwys_sft_settings({"learning_rate": 1e-6, "accelerate_config": "zero2.yaml"})
    assert settings == {"learning_rate": 1e-6, "accelerate_config": "zero2.yaml",
                        "loss_mask": ALL_BUT_PAD_AND_IMAGE, "chat_template": None}
    assert gwys_sft_settings({"loss_mask": ASSISTANT_ONLY, "chat_template": "model"})["loss_mask"] == ASSISTANT_ONLY
    with pytest.raises(ValueError, match="model's own chat template"):
        gwys_sft_settings({"chat_template": "vicuna_v1"})
    config = SFTConfig.from_dict({k: v for k, v in gwys_sft_settings({"max_pixels": 200704}).items()})
    assert (config.loss_mask, config.max_pixels) == (ALL_BUT_PAD_AND_IMAGE, 200704)
