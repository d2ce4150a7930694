"""Masked language models: the tiny random RoBERTa of the embedded default and the loader.

`load_masked_lm` takes a hub id ("FacebookAI/roberta-large" in the paper preset) or a local
folder; the tiny builder saves a real RobertaForMaskedLM with save_pretrained so the demo runs the
same loading code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from transformers import AutoModelForMaskedLM, AutoTokenizer, RobertaConfig, RobertaForMaskedLM

from groundflow.models.spec import ModelSpec, seeded
from groundflow.models.tokenizers import build_tokenizer


def build_tiny_masked_lm(out_dir: str | os.PathLike, seed: int = 0, texts: Iterable[str] = ()) -> Path:
    """Save a randomly initialised RobertaForMaskedLM and its tokenizer to `out_dir`."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer("roberta", out_dir, texts=texts)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if config.pad_token_id != 1:
        raise AssertionError(f"RoBERTa position ids assume pad id 1, tokenizer has {config.pad_token_id}")
    with seeded(seed):
        model = RobertaForMaskedLM(config)
    model.save_pretrained(out_dir)
    return out_dir


def load_masked_lm(spec: ModelSpec):
    """(model, tokenizer) for a masked LM named by `spec`, in eval mode on the spec's device."""
    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    if not tokenizer.is_fast:
        raise ValueError(f"{spec.path}: masking by character span needs a fast tokenizer (offsets)")
    if tokenizer.mask_token_id is None:
        raise ValueError(f"{spec.path}: tokenizer has no mask token")
    model = AutoModelForMaskedLM.from_pretrained(spec.path, dtype=spec.torch_dtype())
    model.to(spec.torch_device())
    model.eval()
    return model, tokenizer
