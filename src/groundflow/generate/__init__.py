"""Batched text generation, LM scoring of choices, and constrained decoding."""

from groundflow.generate.constrained import LineSequenceConstraint, TokenTrie, tokenize_in_context
from groundflow.generate.text import (
    cut_at_stop_strings,
    encode_prompts,
    generate_texts,
    render_prompts,
    score_choices,
)

__all__ = [
    "LineSequenceConstraint",
    "TokenTrie",
    "cut_at_stop_strings",
    "encode_prompts",
    "generate_texts",
    "render_prompts",
    "score_choices",
    "tokenize_in_context",
]
