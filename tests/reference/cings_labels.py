"""CINGS labels built per example the way the original's `preprocess_llama3` does: the reference
`groundflow.cings.labels.CingsLabeler` (compat mode) is tested equal to, and the per-example
baseline of bench/cings_tokenize.py."""

from __future__ import annotations

from typing import Sequence

from groundflow.cings.data import CONTEXT_BLOCK
from groundflow.cings.labels import COMPAT_MARKER_TOKENS, LabelSettings, unmask_token_ids
from groundflow.train.conversations import IGNORE_INDEX, ConversationError, text_tokenizer, to_chat_messages


def _template_ids(tokenizer, messages, chat_template) -> list[int]:
    kwargs = {"tokenize": True, "return_dict": False}
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    ids = tokenizer.apply_chat_template(messages, **kwargs)
    return list(ids)


def original_style_labels(
    conversation: Sequence[dict], tokenizer, settings: LabelSettings, *, chat_template: str | None = None
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation built as the original's `preprocess_llama3` does:
    the system block from its own chat-template call, each turn from another call with the default
    system block sliced off the front (the original hard-codes 26 tokens; measured here), context
    masks from separately tokenised content prefixes, special tokens un-masked in a Python loop.

    Only mask_mode "compat" exists here: shifting the indices by the header length would not give
    the intended mask either, because a content prefix that ends in a space (the text before a
    later `## Context`) tokenises into one token more than inside the whole text. The reference for
    `CingsLabeler` in compat mode, and the benchmark's per-example baseline.
    """
    if settings.mask_mode != "compat":
        raise ValueError("the original's per-example labels exist for mask_mode 'compat' only")
    tok = text_tokenizer(tokenizer)
    messages = to_chat_messages(conversation)
    unmask = set(unmask_token_ids(tok, settings.unmask_tokens))
    default_block = len(_template_ids(tok, [{"role": "system", "content": ""}], chat_template))
    input_ids: list[int] = []
    labels: list[int] = []
    for index, message in enumerate(messages):
        if message["role"] == "system":
            if index != 0:
                raise ConversationError("a system message after the first turn")
            ids = _template_ids(tok, [message], chat_template)
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
            continue
        if index == 0:  # no system message: the template's default block opens the sequence
            ids = _template_ids(tok, [{"role": "system", "content": ""}], chat_template)
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
        ids = _template_ids(tok, [message], chat_template)[default_block:]
        if message["role"] != "assistant":
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
            continue
        turn_labels = list(ids)
        if settings.mode == "context":
            content = message["content"]
            for match in CONTEXT_BLOCK.finditer(content):
                s = len(tok(content[: match.start()], add_special_tokens=False)["input_ids"])
                e = len(tok(content[: match.end()], add_special_tokens=False)["input_ids"])
                for position in range(s + COMPAT_MARKER_TOKENS, e - COMPAT_MARKER_TOKENS):
                    if 0 <= position < len(turn_labels):
                        turn_labels[position] = IGNORE_INDEX
        input_ids += ids
        labels += turn_labels
    for position, token in enumerate(input_ids):
        if token in unmask:
            labels[position] = token
    return input_ids, labels
