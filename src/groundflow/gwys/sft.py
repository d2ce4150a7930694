"""GWYS' cold-start SFT settings for the shared trainer (train.sft; spec §3).

The original fine-tunes Qwen2.5-VL-7B-Instruct in full (vision tower included) with labels equal
to input_ids but at padding and image tokens: system prompt, user text and vision markers are
trained on too. `gwys_sft_settings` fills that mask into a train section that names none
(`loss_mask: all_but_pad_and_image`; "assistant_only" is the documented deviation) and refuses a
chat template other than the model's own: the four-tag prompt is asked in Qwen's chat layout in
SFT, RL and evaluation alike. Everything else is SFTConfig's (the preset writes the paper's values:
lr 1e-6, 2 epochs, max_grad_norm 5, freeze_vision_tower false, ...).

A config section validated by the schema already holds the schema's default loss_mask
("assistant_only"), so GWYS' config sections say `all_but_pad_and_image` themselves.
"""

from __future__ import annotations

from groundflow.train.chat_formats import MODEL_FORMAT
from groundflow.train.config import ALL_BUT_PAD_AND_IMAGE


def gwys_sft_settings(train: dict) -> dict:
    """A train section (SFTConfig settings plus launch settings) with GWYS' defaults filled in."""
    settings = dict(train)
    if settings.get("loss_mask") is None:
        settings["loss_mask"] = ALL_BUT_PAD_AND_IMAGE
    template = settings.get("chat_template")
    if template not in (None, MODEL_FORMAT):
        raise ValueError("GWYS trains in the model's own chat template (Qwen2.5-VL's), in which its prompts are "
                         f"asked in RL and evaluation; train.chat_template is {str(template)[:40]!r}")
    settings["chat_template"] = None
    return settings
