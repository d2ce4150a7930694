"""The model side of the SFT trainer: load a LLaVA or causal LM for training, make the configured
parameters trainable (LoRA through peft, full fine-tuning, projector only), and merge a saved
LoRA adapter into plain HF weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
)

from groundflow.io.artifacts import atomic_directory
from groundflow.models.spec import ModelSpec, resolve_dtype
from groundflow.models.tokenizers import ensure_pad_token
from groundflow.train.config import SFTConfig
from groundflow.train.conversations import text_tokenizer

log = logging.getLogger(__name__)

LLAVA_MODEL_TYPES = {"llava"}
PROJECTOR = "multi_modal_projector"
LANGUAGE_MODEL = "language_model"


def model_type_of(path: str) -> str:
    """config.json's model_type, read from a local folder or resolved through AutoConfig."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text())["model_type"]
    return AutoConfig.from_pretrained(path).model_type


def resolve_bf16(setting: bool | str, device: torch.device) -> bool:
    if setting == "auto":
        return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(setting)


def load_for_training(spec: ModelSpec, *, use_bf16: bool, tokenizer: str = ""):
    """(model, tokenizer or processor, is_llava) for training: right padding, no KV cache.

    tokenizer: where the tokenizer comes from when it is not the model's own (a causal LM only);
    its vocabulary must fit the model's embeddings, which grow to it when it is larger (as the
    original's `resize_token_embeddings(len(tokenizer))`, a no-op for Llama-3.1 base + Instruct)."""
    is_llava = model_type_of(spec.path) in LLAVA_MODEL_TYPES
    if tokenizer and is_llava:
        raise ValueError("a separate tokenizer is for causal LMs; a LLaVA trains with its processor")
    if spec.dtype == "auto":
        dtype = torch.bfloat16 if use_bf16 else torch.float32
    else:
        dtype = resolve_dtype(spec.dtype, spec.torch_device())
    if is_llava:
        processing = AutoProcessor.from_pretrained(spec.path)
        model = LlavaForConditionalGeneration.from_pretrained(spec.path, dtype=dtype)
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
    return model, processing, is_llava


def lora_target_names(model, target_modules: str | Sequence[str] | None, *, is_llava: bool,
                      trained_in_full: Sequence[str] = ()) -> list[str]:
    """Full names of the linear layers LoRA adapts: those of the language model only (never the
    vision tower, projector or LM head), whose last name part is in `target_modules`
    ("all-linear" or None: every linear layer of the language model). Layers inside a module
    named in `trained_in_full` (peft's modules_to_save, e.g. a value head) get no adapter."""
    wanted = None if target_modules in (None, "all-linear") else set([target_modules] if isinstance(target_modules, str) else target_modules)
    full = set(trained_in_full)
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if is_llava and f".{LANGUAGE_MODEL}." not in f".{name}":
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "lm_head" or full.intersection(name.split(".")):
            continue
        if wanted is None or leaf in wanted:
            names.append(name)
    if not names:
        raise ValueError(f"no linear layer of the language model matches target_modules {target_modules!r}")
    return names


def apply_lora(model, lora: dict, *, is_llava: bool, train_projector: bool, task_type: str | None = "CAUSAL_LM"):
    """Wrap `model` with peft LoRA adapters; the projector is trained in full when asked.

    task_type None: a plain PeftModel, for a model that is no causal LM (the value model)."""
    from peft import LoraConfig, get_peft_model

    modules_to_save = list(lora.get("modules_to_save") or [])
    if is_llava and train_projector and PROJECTOR not in modules_to_save:
        modules_to_save.append(PROJECTOR)
    peft_config = LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=int(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=lora_target_names(model, lora.get("target_modules"), is_llava=is_llava,
                                         trained_in_full=modules_to_save),
        modules_to_save=modules_to_save or None,
        task_type=task_type,
    )
    return get_peft_model(model, peft_config)


def set_full_trainable(model, config: SFTConfig, *, is_llava: bool) -> None:
    """Full fine-tuning: the language model as configured; for a LLaVA the vision tower frozen and
    the projector trained unless configured otherwise."""
    for name, parameter in model.named_parameters():
        if not is_llava:
            parameter.requires_grad = True
        elif ".vision_tower." in f".{name}":
            parameter.requires_grad = not config.freeze_vision_tower
        elif f".{PROJECTOR}." in f".{name}":
            parameter.requires_grad = config.train_projector
        else:
            parameter.requires_grad = config.train_language_model
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the configuration leaves no parameter to train")


def prepare_model(model, config: SFTConfig, *, is_llava: bool):
    if config.lora is not None:
        return apply_lora(model, config.lora, is_llava=is_llava, train_projector=config.train_projector)
    set_full_trainable(model, config, is_llava=is_llava)
    return model


def _model_class(is_llava: bool):
    return LlavaForConditionalGeneration if is_llava else AutoModelForCausalLM


def merge_lora_checkpoint(base_path: str, adapter_dir: Path, out_dir: Path, *, is_llava: bool, dtype: torch.dtype, processing,
                          generation_config=None) -> None:
    """Load the base model, apply the saved adapter, merge it into the weights and save HF format.

    Merging a fresh copy from the saved adapter works the same under DDP and ZeRO-3, where the
    training model's weights are sharded or wrapped. `generation_config`, when given, is saved in
    place of the base model's (the trained model's stop tokens).
    """
    from peft import PeftModel

    base = _model_class(is_llava).from_pretrained(base_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    if generation_config is not None:
        merged.generation_config = generation_config
    with atomic_directory(out_dir) as tmp:
        merged.save_pretrained(tmp)
        processing.save_pretrained(tmp)

