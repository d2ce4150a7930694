"""Shared supervised fine-tuning: conversation masking (`conversations`), settings (`config`),
examples and batches (`data`), model loading and LoRA (`model_prep`), the Trainer subclass
(`trainer`) and the entry point (`sft`: `train_sft`, `python -m groundflow.train.sft`).

`conversations` and `config` are light (no Trainer, no peft); the rest load transformers' Trainer.
"""

from groundflow.train.config import SFTConfig
from groundflow.train.conversations import (
    IGNORE_INDEX,
    ConversationError,
    LossMaskFn,
    RenderedConversation,
    all_but_pad_and_image_labels,
    assistant_mask_fn,
    assistant_only_labels,
    encode_with_offsets,
    labels_for_spans,
    loss_mask_fn,
    num_image_tokens,
    render_conversation,
    to_chat_messages,
    truncate_example,
)

__all__ = [
    "IGNORE_INDEX",
    "ConversationError",
    "LossMaskFn",
    "RenderedConversation",
    "SFTConfig",
    "all_but_pad_and_image_labels",
    "assistant_mask_fn",
    "assistant_only_labels",
    "encode_with_offsets",
    "labels_for_spans",
    "loss_mask_fn",
    "num_image_tokens",
    "render_conversation",
    "to_chat_messages",
    "train_sft",
    "truncate_example",
]


def __getattr__(name):
    # The trainer is imported on first use: masking code and tests need not load Trainer/peft.
    if name == "train_sft":
        from groundflow.train.sft import train_sft

        return train_sft
    raise AttributeError(name)
