"""Loading a vision-language checkpoint for inference by its family (`models.vision_families`).

A config names a VLM by path alone (a hub id or a folder); the `model_type` of its `config.json`
says which family it is, and so which loader reads it: LLaVA (`models.llava.load_llava`) or
Qwen2.5-VL (`models.qwen_vl.load_qwen_vl`). Another model_type is refused, naming the known ones.
"""

from __future__ import annotations

from groundflow.models.spec import ModelSpec
from groundflow.models.vision_families import VISION_FAMILIES, VisionFamily, vision_family


def family_of_checkpoint(spec: ModelSpec | dict | str) -> VisionFamily:
    """The family of the checkpoint `spec` names, from its config's model_type (no weights read)."""
    from transformers import AutoConfig

    spec = ModelSpec.from_config(spec)
    model_type = AutoConfig.from_pretrained(spec.path).model_type
    family = vision_family(model_type)
    if family is None:
        raise ValueError(f"{spec.path}: model_type {model_type!r} is no vision-language family this project "
                         f"loads (known: {', '.join(VISION_FAMILIES)})")
    return family


def load_vision_lm(spec: ModelSpec | dict | str) -> tuple[object, object, VisionFamily]:
    """(model, processor, family) of a vision-language checkpoint, in eval mode."""
    spec = ModelSpec.from_config(spec)
    family = family_of_checkpoint(spec)
    if family.model_type == "llava":
        from groundflow.models.llava import load_llava

        model, processor = load_llava(spec)
    elif family.model_type == "qwen2_5_vl":
        from groundflow.models.qwen_vl import load_qwen_vl

        model, processor = load_qwen_vl(spec)
    else:  # a family the trainer knows but inference has no loader for yet: say so
        raise NotImplementedError(f"{spec.path}: no inference loader for the {family.model_type} family")
    return model, processor, family
