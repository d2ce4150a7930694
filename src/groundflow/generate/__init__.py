"""Batched text and vision-language generation, LM scoring of choices, constrained decoding, an
exact, cheaper top-p, and one Generator interface over local HF models and OpenAI-compatible
endpoints (`vllm serve`)."""

from groundflow.generate.backends import (
    ChatPrompt,
    Generator,
    HFTextGenerator,
    HFVisionGenerator,
    SamplingParams,
    make_generator,
)
from groundflow.generate.constrained import ChoiceConstraint, LineSequenceConstraint, TokenTrie, tokenize_in_context
from groundflow.generate.openai_compat import (
    GenerationRequestError,
    MissingAPIKeyError,
    OpenAICompatibleGenerator,
)
from groundflow.generate.sampling import NucleusLogitsWarper, sampling_warpers
from groundflow.generate.text import (
    cut_at_stop_strings,
    encode_prompts,
    generate_texts,
    render_prompts,
    score_choices,
)
from groundflow.generate.vision import generate_vision_texts, render_vision_prompts

__all__ = [
    "ChatPrompt",
    "ChoiceConstraint",
    "GenerationRequestError",
    "Generator",
    "HFTextGenerator",
    "HFVisionGenerator",
    "LineSequenceConstraint",
    "MissingAPIKeyError",
    "NucleusLogitsWarper",
    "OpenAICompatibleGenerator",
    "SamplingParams",
    "TokenTrie",
    "cut_at_stop_strings",
    "encode_prompts",
    "generate_texts",
    "generate_vision_texts",
    "make_generator",
    "render_prompts",
    "render_vision_prompts",
    "sampling_warpers",
    "score_choices",
    "tokenize_in_context",
]
