"""TSST's training settings for the shared trainers: the policy (train.sft) and the value model
(train.value) both train in the one conversation format the prompts are asked in (Vicuna v1), with
LLaVA's vision tower and projector frozen (finetune_{policy,value}_lora.sh: --freeze_mm_mlp_adapter).

SFTConfig's own defaults train the projector and take the checkpoint's chat template; a TSST train
section that leaves these out gets the recipe's values here (the config schema fills
`train_projector: true` into a section, so TSST's config sections say `false` themselves), and one
that names another chat template is refused, since search, labels and judge all render in it.
"""

from __future__ import annotations

from groundflow.tsst.prompts import CONVERSATION_FORMAT


def tsst_train_settings(train: dict) -> dict:
    """A train section (SFTConfig settings plus launch settings) with TSST's defaults filled in."""
    settings = dict(train)
    if settings.get("chat_template") is None:  # the config schema's default is null
        settings["chat_template"] = CONVERSATION_FORMAT
    template = settings["chat_template"]
    if template != CONVERSATION_FORMAT:
        raise ValueError(f"TSST trains in the {CONVERSATION_FORMAT} conversation format its prompts are asked in; "
                         f"train.chat_template is {str(template)[:40]!r}")
    settings.setdefault("train_projector", False)
    return settings
