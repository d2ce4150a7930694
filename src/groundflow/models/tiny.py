"""Tiny randomly initialised models of the real architectures, for the embedded default.

Each is saved the way its real checkpoint is (save_pretrained, or safetensors + config.json for
SAM) and loads through the same loader that takes the paper preset's hub id or checkpoint path.
"""

from __future__ import annotations

import os
from pathlib import Path

from groundflow.io.artifacts import atomic_directory


def _builders():
    from groundflow.models.causal_lm import build_tiny_causal_lm
    from groundflow.models.grounding_dino import build_tiny_grounding_dino
    from groundflow.models.llava import build_tiny_llava
    from groundflow.models.masked_lm import build_tiny_masked_lm
    from groundflow.models.sam import build_tiny_sam

    def build_tiny_llama3(out_dir, seed: int = 0):
        """The CINGS base model: Llama-3.1-Instruct's chat template, vocabulary fitted to the fixture."""
        from groundflow.cings.fixture import fixture_texts

        return build_tiny_causal_lm(out_dir, seed=seed, texts=fixture_texts(), flavor="llama3")

    from groundflow.models.llava import build_tiny_clip_vision

    return {
        "llama": build_tiny_causal_lm,
        "llama3": build_tiny_llama3,
        "clip": build_tiny_clip_vision,
        "roberta": build_tiny_masked_lm,
        "grounding-dino": build_tiny_grounding_dino,
        "sam": build_tiny_sam,
        "llava": build_tiny_llava,
    }


TINY_KINDS = ("llama", "roberta", "grounding-dino", "sam", "llava", "llama3", "clip")


def build_tiny_model(kind: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Build `kind` into `out_dir` atomically: a killed build never leaves a half model."""
    builders = _builders()
    if kind not in builders:
        raise ValueError(f"unknown tiny model kind {kind!r}; one of {sorted(builders)}")
    with atomic_directory(out_dir) as tmp:
        builders[kind](tmp, seed=seed)
    return Path(out_dir)
