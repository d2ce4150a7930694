"""Tiny randomly initialised models of the real architectures, for the embedded default.

Each is saved the way its real checkpoint is (save_pretrained, or safetensors + config.json for
SAM) and loads through the same loader that takes the paper preset's hub id or checkpoint path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from groundflow.io.artifacts import atomic_directory


def _builders():
    from groundflow.models.causal_lm import build_tiny_causal_lm
    from groundflow.models.grounding_dino import build_tiny_grounding_dino
    from groundflow.models.llava import build_tiny_llava
    from groundflow.models.masked_lm import build_tiny_masked_lm
    from groundflow.models.sam import build_tiny_sam

    def build_tiny_llama3(out_dir, seed: int = 0, vocabulary: Sequence[str] | None = None):
        """Llama-3.1-Instruct's chat template; its byte-level BPE is fitted to `vocabulary` texts."""
        if not vocabulary:
            raise ValueError("a tiny llama3 needs `vocabulary`: the texts its tokenizer is fitted to")
        return build_tiny_causal_lm(out_dir, seed=seed, texts=list(vocabulary), flavor="llama3")

    def build_fitted_llava(out_dir, seed: int = 0, vocabulary: Sequence[str] | None = None):
        """A tiny LLaVA whose byte-level BPE is fitted to `vocabulary` (TSST's chains and questions)."""
        if not vocabulary:
            raise ValueError("a fitted tiny llava needs `vocabulary`: the texts its tokenizer is fitted to")
        return build_tiny_llava(out_dir, seed=seed, texts=list(vocabulary))

    def build_fitted_qwen_vl(out_dir, seed: int = 0, vocabulary: Sequence[str] | None = None):
        """A tiny Qwen2.5-VL whose byte-level BPE is fitted to `vocabulary` (GWYS' prompts and answers)."""
        if not vocabulary:
            raise ValueError("a fitted tiny qwen-vl needs `vocabulary`: the texts its tokenizer is fitted to")
        from groundflow.models.qwen_vl import build_tiny_qwen_vl

        return build_tiny_qwen_vl(out_dir, seed=seed, texts=list(vocabulary))

    from groundflow.models.llava import build_tiny_clip_vision

    return {
        "llama": build_tiny_causal_lm,
        "llama3": build_tiny_llama3,
        "clip": build_tiny_clip_vision,
        "roberta": build_tiny_masked_lm,
        "grounding-dino": build_tiny_grounding_dino,
        "sam": build_tiny_sam,
        "llava": build_tiny_llava,
        "tsst-llava": build_fitted_llava,
        "gwys-qwen-vl": build_fitted_qwen_vl,
    }


TINY_KINDS = ("llama", "roberta", "grounding-dino", "sam", "llava", "llama3", "clip", "tsst-llava", "gwys-qwen-vl")
FITTED_KINDS = ("llama3", "tsst-llava", "gwys-qwen-vl")


def build_tiny_model(kind: str, out_dir: str | os.PathLike, seed: int = 0,
                     vocabulary: Sequence[str] | None = None) -> Path:
    """Build `kind` into `out_dir` atomically: a killed build never leaves a half model.

    `vocabulary`: texts a kind with a fitted tokenizer (FITTED_KINDS) learns its merges from; the caller
    (groundflow.demo) takes them from a method's fixture, so this layer imports no method.
    """
    builders = _builders()
    if kind not in builders:
        raise ValueError(f"unknown tiny model kind {kind!r}; one of {sorted(builders)}")
    options = {"vocabulary": vocabulary} if kind in FITTED_KINDS else {}
    if vocabulary is not None and not options:
        raise ValueError(f"tiny {kind} has a fixed vocabulary; only {FITTED_KINDS} take `vocabulary`")
    with atomic_directory(out_dir) as tmp:
        builders[kind](tmp, seed=seed, **options)
    return Path(out_dir)
