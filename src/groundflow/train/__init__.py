"""Shared supervised fine-tuning: conversation masking (`conversations`) and the trainer (`sft`).

`groundflow.train.conversations` is pure tokenizer code; import `groundflow.train.sft` for the
trainer (it pulls in transformers' Trainer and peft).
"""

from groundflow.train.conversations import (
    IGNORE_INDEX,
    ConversationError,
    LossMaskFn,
    RenderedConversation,
    assistant_mask_fn,
    assistant_only_labels,
    encode_with_offsets,
    labels_for_spans,
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
    "assistant_mask_fn",
    "assistant_only_labels",
    "encode_with_offsets",
    "labels_for_spans",
    "num_image_tokens",
    "render_conversation",
    "to_chat_messages",
    "train_sft",
    "truncate_example",
]


def __getattr__(name):
    # The trainer is imported on first use: masking code and tests need not load Trainer/peft.
    if name in ("SFTConfig", "train_sft"):
        from groundflow.train import sft

        return getattr(sft, name)
    raise AttributeError(name)
