"""Grounding DINO: loading by spec, and a tiny random instance of the real architecture.

`load_grounding_dino` takes a hub id ("IDEA-Research/grounding-dino-base", the paper-scale preset)
or a local folder written by `build_tiny_grounding_dino` (the embedded default); both go through
the same Auto classes, so the demo runs the real loading, pre-processing and post-processing code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from groundflow.models.spec import ModelSpec, seeded
from groundflow.models.tokenizers import build_tokenizer

# Object names a grounding prompt is likely to hold, so the tiny WordPiece vocabulary has them whole.
_GROUNDING_WORDS = (
    "dog cat person man woman child car bus truck bicycle boat train airplane horse sheep cow "
    "bird kite umbrella cup fork knife spoon bowl plate pizza banana apple orange clock vase "
    "chair couch bed table television laptop phone book bottle ball tree house skier oars"
)

# A random detector's box scores saturate at 1.0 (its vision and text features are large, so
# their dot products are too). Shrinking the decoder's final LayerNorm spreads the best score of a
# (image, prompt) pair over roughly 0.6 to 0.75, so a threshold in that range keeps some pairs and
# rejects others, as a trained detector would.
TINY_SCORE_SCALE = 0.05

# Processor resolution of the tiny detector: small enough for fast CPU tests.
TINY_SHORTEST_EDGE = 128
TINY_LONGEST_EDGE = 192


def tiny_grounding_dino_config(vocab_size: int, pad_token_id: int):
    """A GroundingDinoConfig with the real sub-architectures (Swin backbone, BERT text encoder)
    shrunk to a few channels. Backbone weights are random, never downloaded."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    backbone = SwinConfig(
        image_size=TINY_LONGEST_EDGE,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=pad_token_id,
    )
    return GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        num_queries=30,
        encoder_layers=1,
        encoder_ffn_dim=64,
        encoder_attention_heads=2,
        # The box heads are tied across decoder layers: one layer leaves nothing to tie and fails.
        decoder_layers=2,
        decoder_ffn_dim=64,
        decoder_attention_heads=2,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=256,
    )


def build_tiny_grounding_dino(out_dir: str | Path, seed: int = 0, texts: Iterable[str] = ()) -> Path:
    """Build a randomly initialised tiny GroundingDinoForObjectDetection and its processor
    (image processor + "bert" WordPiece tokenizer trained on the base corpus plus `texts`) and save
    both to `out_dir` with save_pretrained. Deterministic given `seed`."""
    from transformers import (
        AutoTokenizer,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = out_dir / ".tokenizer-build"
    build_tokenizer("bert", tok_dir, texts=[_GROUNDING_WORDS, *texts], vocab_size=1024)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)

    config = tiny_grounding_dino_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    with seeded(seed):
        model = GroundingDinoForObjectDetection(config).eval()
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.mul_(TINY_SCORE_SCALE)
        model.model.decoder.layer_norm.bias.mul_(TINY_SCORE_SCALE)

    image_processor = GroundingDinoImageProcessor(
        size={"shortest_edge": TINY_SHORTEST_EDGE, "longest_edge": TINY_LONGEST_EDGE}
    )
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    for leftover in sorted(tok_dir.glob("*")):
        leftover.unlink()
    tok_dir.rmdir()
    return out_dir


def load_grounding_dino(spec: ModelSpec | dict | str):
    """Load (model, processor) for zero-shot detection from a hub id or a local folder; the model is
    in eval mode on the spec's device and dtype."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    spec = ModelSpec.from_config(spec)
    processor = AutoProcessor.from_pretrained(spec.path)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(spec.path, dtype=spec.torch_dtype())
    model.to(spec.torch_device()).eval()
    return model, processor
