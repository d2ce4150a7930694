"""Batched text and vision-language generation, LM scoring of choices, constrained decoding, an
exact, cheaper top-p, masked-LM span scoring, and one Generator interface over local HF models
and OpenAI-compatible endpoints (`vllm serve`, optionally started per stage).

Names are loaded on first use: `from groundflow.generate.backends import ChatPrompt` (what method
code does) must not import torch through this package's __init__.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "ChatPrompt": "backends",
    "Generator": "backends",
    "HFTextGenerator": "backends",
    "HFVisionGenerator": "backends",
    "LineChoices": "backends",
    "SamplingParams": "backends",
    "UnsupportedFeatureError": "backends",
    "make_generator": "backends",
    "open_generator": "backends",
    "ChoiceConstraint": "constrained",
    "LineSequenceConstraint": "constrained",
    "TokenTrie": "constrained",
    "tokenize_in_context": "constrained",
    "GenerationRequestError": "openai_compat",
    "MissingAPIKeyError": "openai_compat",
    "OpenAICompatibleGenerator": "openai_compat",
    "MaskedLMScorer": "masked_lm",
    "ManagedServerError": "served",
    "served_endpoint": "served",
    "NucleusLogitsWarper": "sampling",
    "sampling_warpers": "sampling",
    "cut_at_stop_strings": "text",
    "encode_prompts": "text",
    "generate_texts": "text",
    "render_prompts": "text",
    "score_choices": "text",
    "generate_vision_texts": "vision",
    "render_vision_prompts": "vision",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
