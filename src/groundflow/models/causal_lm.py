"""Causal language models: one loader for hub ids and local folders, and a tiny random Llama.

The tiny model is a real `LlamaForCausalLM` with random weights and a locally trained Llama-style
tokenizer (chat template included), saved with `save_pretrained`, so the demo goes through exactly
the loading, templating and generation code that a real Llama checkpoint would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from groundflow.models.spec import ModelSpec, seeded
from groundflow.models.tokenizers import build_tokenizer

TINY_LLAMA = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=2048,
)


def build_tiny_causal_lm(out_dir: str | Path, seed: int = 0, texts: Iterable[str] = (), flavor: str = "llama") -> Path:
    """Build and save a random tiny LlamaForCausalLM plus its tokenizer into `out_dir`.

    The tokenizer is trained on the base corpus plus `texts` (pass the prompts the model will see
    so that they tokenise into few tokens). Same seed and texts give the same files' contents.
    flavor: the tokenizer's (`tokenizers.build_tokenizer`); "llama3" gives Llama-3's pre-tokenizer
    and Llama-3.1-Instruct's chat template, no pad token, and the base model's EOS
    <|end_of_text|> in the model's configs (the CINGS base model).
    """
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(flavor, out_dir, texts)
    # The CINGS base is Llama-3.1-8B, whose config ends text with <|end_of_text|>, trained with the
    # Instruct tokenizer, whose EOS is <|eot_id|>: the two disagree, as the real pair does.
    eos_token_id = tokenizer.convert_tokens_to_ids("<|end_of_text|>") if flavor == "llama3" else tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_LLAMA,
    )
    with seeded(seed):
        model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_causal_lm(spec: ModelSpec | dict | str):
    """Load (model, tokenizer) for a hub id or a local folder, ready for batched generation.

    The model is in eval mode on the spec's device and dtype; the tokenizer pads on the left (what
    batched decoder-only generation needs) and falls back to eos as pad token when the checkpoint
    defines none (Llama-2).
    """
    spec = ModelSpec.from_config(spec)
    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=spec.torch_dtype())
    model.to(spec.torch_device())
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
