"""The model side of the SFT trainer: load a causal LM or a vision-language model of a known
family (LLaVA, Qwen2.5-VL: `models.vision_families`, keyed by config.json's model_type) for
training, make the configured parameters trainable (LoRA through peft on the language model,
full fine-tuning, projector only), and merge a saved LoRA adapter into plain HF weights.

`vision` is the model's VisionFamily, None for a text-only model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

from groundflow.io.artifacts import atomic_directory
from groundflow.models.spec import ModelSpec, resolve_dtype
from groundflow.models.tokenizers import ensure_pad_token
from groundflow.models.vision_families import VisionFamily, set_image_pixel_bounds, vision_family
from groundflow.train.config import SFTConfig
from groundflow.train.conversations import text_tokenizer

log = logging.getLogger(__name__)

LLAVA_MODEL_TYPES = {"llava"}


def model_type_of(path: str) -> str:
    """config.json's model_type, read from a local folder or resolved through AutoConfig."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text())["model_type"]
    return AutoConfig.from_pretrained(path).model_type


def vision_family_of(path: str) -> VisionFamily | None:
    """The vision-language family of the model at `path`; None for a text-only model."""
    return vision_family(model_type_of(path))


def resolve_bf16(setting: bool | str, device: torch.device) -> bool:
    if setting == "auto":
        return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(setting)


def load_for_training(spec: ModelSpec, *, use_bf16: bool, tokenizer: str = ""):
    """(model, tokenizer or processor, vision family or None) for training: right padding, no KV
    cache.

    tokenizer: where the tokenizer comes from when it is not the model's own (a causal LM only);
    its vocabulary must fit the model's embeddings, which grow to it when it is larger (as the
    original's `resize_token_embeddings(len(tokenizer))`, a no-op for Llama-3.1 base + Instruct)."""
    vision = vision_family_of(spec.path)
    if tokenizer and vision:
        raise ValueError(f"a separate tokenizer is for causal LMs; a {vision.model_type} model trains with its processor")
    if spec.dtype == "auto":
        dtype = torch.bfloat16 if use_bf16 else torch.float32
    else:
        dtype = resolve_dtype(spec.dtype, spec.torch_device())
    if vision:
        processing = AutoProcessor.from_pretrained(spec.path)
        model = vision.transformers_class().from_pretrained(spec.path, dtype=dtype)
    else:
        processing = AutoTokenizer.from_pretrained(tokenizer or spec.path)
        model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype)
        if len(processing) > model.get_input_embeddings().num_embeddings:
            log.warning("tokenizer %s has %d tokens, the model %d embeddings: resizing",
                        tokenizer, len(processing), model.get_input_embeddings().num_embeddings)
            model.resize_token_embeddings(len(processing))
    tok = text_tokenizer(processing)
    tok.padding_side = "right"
    # Not EOS: Llama-3.1-Instruct's EOS is its end-of-turn token, and a checkpoint saved with
    # pad == end-of-turn carries that into every model composed or trained from it.
    ensure_pad_token(tok)
    model.config.use_cache = False
    if getattr(model.config, "text_config", None) is not None:
        model.config.text_config.use_cache = False
    return model, processing, vision


def configure_processor(processing, vision: VisionFamily | None, config: SFTConfig) -> None:
    """Apply the config's image settings to the processor (min_pixels / max_pixels: for a family
    that resizes each image, Qwen2.5-VL); refused for a model that has no such setting."""
    if config.min_pixels is None and config.max_pixels is None:
        return
    if vision is None or not vision.tokens_vary_per_image:
        raise ValueError(f"min_pixels / max_pixels bound the resize of a Qwen2.5-VL-style processor; "
                         f"this model ({vision.model_type if vision else 'text-only'}) has a fixed image size")
    set_image_pixel_bounds(processing, min_pixels=config.min_pixels, max_pixels=config.max_pixels)


def lora_target_names(model, target_modules: str | Sequence[str] | None, *, vision: VisionFamily | None,
                      trained_in_full: Sequence[str] = ()) -> list[str]:
    """Full names of the linear layers LoRA adapts: those of the language model only (never the
    vision tower, projector or LM head), whose last name part is in `target_modules`
    ("all-linear" or None: every linear layer of the language model). For a vision-language
    model (`vision`) that is the family's language model (`model.language_model` in LLaVA and
    Qwen2.5-VL). Layers inside a module named in `trained_in_full` (peft's modules_to_save, e.g.
    a value head) get no adapter."""
    wanted = None if target_modules in (None, "all-linear") else set([target_modules] if isinstance(target_modules, str) else target_modules)
    full = set(trained_in_full)
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if vision and not vision.in_language_model(name):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "lm_head" or full.intersection(name.split(".")):
            continue
        if wanted is None or leaf in wanted:
            names.append(name)
    if not names:
        raise ValueError(f"no linear layer of the language model matches target_modules {target_modules!r}")
    return names


def apply_lora(model, lora: dict, *, vision: VisionFamily | None, train_projector: bool,
               task_type: str | None = "CAUSAL_LM"):
    """Wrap `model` with peft LoRA adapters on its language model; a vision-language model's
    projector (LLaVA's multi_modal_projector, Qwen2.5-VL's patch merger) is trained in full when
    asked, its vision tower stays frozen.

    task_type None: a plain PeftModel, for a model that is no causal LM (the value model)."""
    from peft import LoraConfig, get_peft_model

    modules_to_save = list(lora.get("modules_to_save") or [])
    if vision and train_projector and vision.projector not in modules_to_save:
        modules_to_save.append(vision.projector)
    peft_config = LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=int(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=lora_target_names(model, lora.get("target_modules"), vision=vision,
                                         trained_in_full=modules_to_save),
        modules_to_save=modules_to_save or None,
        task_type=task_type,
    )
    return get_peft_model(model, peft_config)


def set_full_trainable(model, config: SFTConfig, *, vision: VisionFamily | None) -> None:
    """Full fine-tuning: the language model as configured; for a vision-language model the vision
    tower frozen (freeze_vision_tower) and the projector trained (train_projector) unless
    configured otherwise. Qwen2.5-VL's projector is its patch merger, inside the vision tower."""
    trains = {"projector": config.train_projector, "vision_tower": not config.freeze_vision_tower,
              "language_model": config.train_language_model}
    for name, parameter in model.named_parameters():
        parameter.requires_grad = True if vision is None else trains[vision.part_of(name)]
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the configuration leaves no parameter to train")


def prepare_model(model, config: SFTConfig, *, vision: VisionFamily | None):
    if config.lora is not None:
        return apply_lora(model, config.lora, vision=vision, train_projector=config.train_projector)
    set_full_trainable(model, config, vision=vision)
    return model


def model_class(vision: VisionFamily | None):
    """The class a checkpoint of the family (None: a causal LM) loads with."""
    return vision.transformers_class() if vision else AutoModelForCausalLM


def merge_lora_checkpoint(base_path: str, adapter_dir: Path, out_dir: Path, *, vision: VisionFamily | None,
                          dtype: torch.dtype, processing, generation_config=None) -> None:
    """Load the base model, apply the saved adapter, merge it into the weights and save HF format.

    Merging a fresh copy from the saved adapter works the same under DDP and ZeRO-3, where the
    training model's weights are sharded or wrapped. `generation_config`, when given, is saved in
    place of the base model's (the trained model's stop tokens).
    """
    from peft import PeftModel

    base = model_class(vision).from_pretrained(base_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    if generation_config is not None:
        merged.generation_config = generation_config
    with atomic_directory(out_dir) as tmp:
        merged.save_pretrained(tmp)
        processing.save_pretrained(tmp)

