"""Segment Anything: a tiny random instance of the real architecture, and one loader for it and for
the official checkpoints.

The official release (`sam_vit_h_4b8939.pth`, `sam_vit_l_0b3195.pth`, `sam_vit_b_01ec64.pth`) is a
plain state dict, so it loads with `torch.load(weights_only=True)`; nothing else is ever unpickled.
Our own folders (the tiny model) hold `config.json` (the dimensions) + `model.safetensors`.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from groundflow.io import atomic_path
from groundflow.io.artifacts import atomic_write_json
from groundflow.models.spec import ModelSpec, seeded

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINT_SUFFIXES = (".pth", ".pt")
MODEL_TYPES = ("vit_h", "vit_l", "vit_b")

# Same layout as segment_anything's own builders; only the sizes are small.
TINY_SAM_CONFIG = {
    "architecture": "segment_anything.Sam",
    "image_size": 256,
    "patch_size": 16,
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "encoder_window_size": 4,
    "encoder_mlp_ratio": 4,
    "prompt_embed_dim": 32,
    "mask_in_chans": 8,
    "decoder_depth": 2,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 32,
    "num_multimask_outputs": 3,
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
}


def sam_from_config(config: dict) -> Sam:
    """A randomly initialised `Sam` with the dimensions in `config` (see TINY_SAM_CONFIG)."""
    c = {**TINY_SAM_CONFIG, **config}
    if c["image_size"] % c["patch_size"]:
        raise ValueError(
            f"image_size {c['image_size']} is not a multiple of patch_size {c['patch_size']}"
        )
    bad = [i for i in c["encoder_global_attn_indexes"] if not 0 <= i < c["encoder_depth"]]
    if bad:
        raise ValueError(f"encoder_global_attn_indexes {bad} outside depth {c['encoder_depth']}")
    embedding_size = c["image_size"] // c["patch_size"]
    dim = c["prompt_embed_dim"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=c["image_size"],
            patch_size=c["patch_size"],
            embed_dim=c["encoder_embed_dim"],
            depth=c["encoder_depth"],
            num_heads=c["encoder_num_heads"],
            mlp_ratio=c["encoder_mlp_ratio"],
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=c["encoder_window_size"],
            global_attn_indexes=tuple(c["encoder_global_attn_indexes"]),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(c["image_size"], c["image_size"]),
            mask_in_chans=c["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=c["num_multimask_outputs"],
            transformer=TwoWayTransformer(
                depth=c["decoder_depth"],
                embedding_dim=dim,
                mlp_dim=c["decoder_mlp_dim"],
                num_heads=c["decoder_num_heads"],
            ),
            transformer_dim=dim,
            iou_head_depth=c["iou_head_depth"],
            iou_head_hidden_dim=c["iou_head_hidden_dim"],
        ),
        pixel_mean=c["pixel_mean"],
        pixel_std=c["pixel_std"],
    )
    return sam.eval()


def build_tiny_sam(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialised tiny `Sam` (real segment_anything classes) to `out_dir`."""
    out_dir = Path(out_dir)
    config = {**TINY_SAM_CONFIG, **overrides, "seed": seed}
    with seeded(seed):
        sam = sam_from_config(config)
        # Random weights for every tensor, including those segment_anything leaves at zero/one
        # (layer norms, relative position tables), so the tiny model's outputs vary with the input.
        with torch.no_grad():
            for name, tensor in sam.named_parameters():
                if "rel_pos" in name or name.endswith("pos_embed"):
                    tensor.normal_(0.0, 0.02)
    state = {k: v.detach().contiguous() for k, v in sam.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_json(out_dir / CONFIG_NAME, config)
    return out_dir


def load_sam(spec: ModelSpec | dict | str, model_type: str | None = None) -> Sam:
    """Load SAM from our folder (config.json + model.safetensors) or an official `.pth` checkpoint.

    Weights stay float32 on `spec`'s device: `SamPredictor` feeds float32 images to the model, so
    reduced precision is applied by autocast at inference time (see vision.segmentation), not here.
    """
    spec = ModelSpec.from_config(spec)
    path = Path(spec.path)
    if path.is_dir():
        config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not (config_file.is_file() and weights_file.is_file()):
            raise FileNotFoundError(f"SAM folder {path} needs {CONFIG_NAME} and {WEIGHTS_NAME}")
        sam = sam_from_config(json.loads(config_file.read_text()))
        sam.load_state_dict(load_file(str(weights_file)), strict=True)
    elif path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        model_type = model_type or checkpoint_model_type(path)
        sam = sam_model_registry[model_type](checkpoint=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state, strict=True)
    elif path.exists():
        raise ValueError(
            f"SAM path {path} is neither a folder with {CONFIG_NAME} + {WEIGHTS_NAME} "
            f"nor a {'/'.join(CHECKPOINT_SUFFIXES)} checkpoint"
        )
    else:
        raise FileNotFoundError(
            f"SAM checkpoint {path} not found: download an official checkpoint "
            "(e.g. sam_vit_h_4b8939.pth from the segment-anything release) and give its path"
        )
    return sam.to(spec.torch_device()).eval()


def checkpoint_model_type(path: str | Path) -> str:
    """vit_h / vit_l / vit_b from an official checkpoint's file name (sam_vit_h_4b8939.pth)."""
    match = re.search(r"vit[_-]?([hlb])(?![a-z])", Path(path).name.lower())
    if not match:
        raise ValueError(
            f"cannot tell the SAM architecture from {Path(path).name!r}; "
            f"pass model_type (one of {', '.join(MODEL_TYPES)})"
        )
    return f"vit_{match.group(1)}"
