"""CINGS token labels: which tokens of a training conversation carry the loss, per mode.

The rules (specs/cings.md §4), for every mode:
- system and user turns get IGNORE_INDEX; the whole assistant turn, from its header
  (`<|start_header_id|>assistant<|end_header_id|>\\n\\n`) through its `<|eot_id|>`, keeps its ids;
- a final pass supervises every `unmask_tokens` occurrence anywhere in the sequence
  (`<|begin_of_text|>`, `<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>`: LLaVA-NeXT's rule,
  which the original keeps; "\\n\\n" in its list never matched a Llama-3 token and is left out).

Mode `context` (CINGS) also masks the passage of every `## Context ... ## Answer` block:
- mask_mode "intended": exactly the tokens whose characters lie between the end of `## Context`
  and the start of ` ## Answer`, found by the offset mapping of one tokenisation of the rendered
  text; the markers and the answer are trained on.
- mask_mode "compat": the original's computation, bug included. Per block, s = the token count of
  the content before `## Context` and e = the token count through `## Answer` (each tokenised on its
  own), and positions [s+2, e-2) of the *turn* are masked, whose first tokens are the header, so
  the mask lands one header length (4 tokens with Llama-3) early: the header's "\\n\\n", `##` and
  ` Context` are masked and the last passage tokens are trained on. The content before a later
  block ends in a space, which tokenised alone is one token more than inside the text, so that
  block's mask starts one token later than the first's (and covers the previous answer's tail).
Modes `no_context` (the passage was removed from the text) and `no_mask` mask nothing more.

`CingsLabeler.encode` renders a batch with the chat template, tokenises it in one call with
offsets and computes labels with array operations. `original_style_labels` in
tests/reference/cings_labels.py builds one example the way the original does (separate
chat-template calls per turn, header slicing, Python loops); it is the reference the batched path
is tested against and the per-example baseline of the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from groundflow.cings.data import CONTEXT_BLOCK, MODES, context_blocks
from groundflow.train.conversations import (
    IGNORE_INDEX,
    ConversationError,
    RenderedConversation,
    _render,
    labels_for_spans,
    render_conversation,
    text_tokenizer,
    to_chat_messages,
)

MASK_MODES = ("intended", "compat")
DEFAULT_UNMASK_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
COMPAT_MARKER_TOKENS = 2  # the original trims `##`+` Context` and ` ##`+` Answer` as two tokens each

Span = tuple[int, int]


@dataclass(frozen=True)
class LabelSettings:
    mode: str
    mask_mode: str = "intended"
    unmask_tokens: tuple[str, ...] = DEFAULT_UNMASK_TOKENS

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown CINGS mode {self.mode!r}; one of {MODES}")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"unknown mask_mode {self.mask_mode!r}; one of {MASK_MODES}")
        object.__setattr__(self, "unmask_tokens", tuple(self.unmask_tokens))


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    n_assistant_tokens: int  # tokens of the assistant turn(s), header included
    n_masked_in_assistant: int  # of those, how many carry no loss


def unmask_token_ids(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Ids of `tokens`; a token the vocabulary lacks is an error, not a silent None (the original's
    "\\n\\n" entry)."""
    vocab = text_tokenizer(tokenizer).get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ValueError(f"unmask_tokens not in the tokenizer's vocabulary: {missing}")
    return [vocab[t] for t in tokens]


def generation_prompt(tokenizer, chat_template: str | None = None) -> str:
    """The text the template writes to open an assistant turn (`add_generation_prompt`)."""
    probe = [{"role": "user", "content": "x"}]
    without = _render(tokenizer, probe, chat_template, add_generation_prompt=False)
    with_prompt = _render(tokenizer, probe, chat_template, add_generation_prompt=True)
    if not with_prompt.startswith(without) or with_prompt == without:
        raise ConversationError("the chat template's generation prompt is not a suffix it appends")
    return with_prompt[len(without) :]


class CingsLabeler:
    """Token ids and labels of CINGS conversations for one tokenizer and one LabelSettings."""

    def __init__(self, tokenizer, settings: LabelSettings, *, chat_template: str | None = None):
        self.tokenizer = text_tokenizer(tokenizer)
        self.settings = settings
        self.chat_template = chat_template
        self.unmask_ids = np.asarray(unmask_token_ids(self.tokenizer, settings.unmask_tokens), dtype=np.int64)
        self.generation_prompt = generation_prompt(self.tokenizer, chat_template)

    # -- rendering

    def _assistant_turns(self, conversation, rendered: RenderedConversation) -> list[tuple[int, int, int, str]]:
        """(header_start, content_start, turn_end, content as given) per assistant turn."""
        messages = to_chat_messages(conversation)
        contents = [m["content"] for m in messages if m["role"] == "assistant"]
        turns = []
        for (turn_start, turn_end), (content_start, _), content in zip(rendered.assistant_spans, rendered.content_spans, contents):
            header_start = turn_start - len(self.generation_prompt)
            if rendered.text[header_start:turn_start] != self.generation_prompt:
                raise ConversationError("the assistant turn does not open with the template's generation prompt")
            turns.append((header_start, content_start, turn_end, content))
        return turns

    # -- labels

    def _labels(self, ids: np.ndarray, offsets: np.ndarray, rendered, turns, prefix_counts) -> np.ndarray:
        settings = self.settings
        masked_passages = settings.mode == "context"
        spans: list[Span] = []
        for header_start, content_start, turn_end, _ in turns:
            cuts: list[Span] = []
            if masked_passages and settings.mask_mode == "intended":
                text = rendered.text[content_start:turn_end]
                cuts = [(content_start + s, content_start + e) for s, e in context_blocks(text)]
            cursor = header_start
            for start, end in cuts:
                spans.append((cursor, start))
                cursor = end
            spans.append((cursor, turn_end))
        labels = np.asarray(labels_for_spans(ids, offsets, spans), dtype=np.int64)
        if masked_passages and settings.mask_mode == "compat":
            starts = offsets[:, 0]
            for (header_start, _, _, content), counts in zip(turns, prefix_counts):
                turn_token = int(np.searchsorted(starts, header_start, side="left"))
                for s, e in counts:
                    lo = max(turn_token + s + COMPAT_MARKER_TOKENS, 0)
                    hi = min(turn_token + e - COMPAT_MARKER_TOKENS, len(labels))
                    if hi > lo:
                        labels[lo:hi] = IGNORE_INDEX
        special = np.isin(ids, self.unmask_ids)
        labels[special] = ids[special]
        return labels

    def encode(self, conversations: Sequence[Sequence[dict]]) -> list[Encoded | str]:
        """One Encoded per conversation, or the reason (a str) it cannot be labelled."""
        tok = self.tokenizer
        results: list[Encoded | str | None] = [None] * len(conversations)
        prepared = []  # (index, rendered, turns)
        for index, conversation in enumerate(conversations):
            try:
                rendered = render_conversation(conversation, tok, chat_template=self.chat_template)
                prepared.append((index, rendered, self._assistant_turns(conversation, rendered)))
            except ConversationError as error:
                results[index] = str(error)

        prefix_counts: dict[int, list[list[tuple[int, int]]]] = {}
        if self.settings.mode == "context" and self.settings.mask_mode == "compat":
            prefix_counts = self._compat_prefix_counts(prepared)

        for add_special in (True, False):
            group = [p for p in prepared if p[1].add_special_tokens == add_special]
            if not group:
                continue
            for (index, rendered, turns), (ids, offsets) in zip(group, self._tokenize([p[1].text for p in group], add_special)):
                ids_array = np.asarray(ids, dtype=np.int64)
                offsets_array = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
                labels = self._labels(ids_array, offsets_array, rendered, turns, prefix_counts.get(index, []))
                starts = offsets_array[:, 0]
                in_assistant = np.zeros(len(ids_array), dtype=bool)
                for header_start, _, turn_end, _ in turns:
                    in_assistant |= (starts >= header_start) & (starts < turn_end) & (offsets_array[:, 1] > starts)
                results[index] = Encoded(
                    input_ids=ids_array.tolist(),
                    labels=labels.tolist(),
                    n_assistant_tokens=int(in_assistant.sum()),
                    n_masked_in_assistant=int((in_assistant & (labels == IGNORE_INDEX)).sum()),
                )
        return results  # type: ignore[return-value]

    def _tokenize(self, texts: list[str], add_special_tokens: bool) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, character offsets) per text in one call; a fast tokenizer's Rust backend is called
        directly (the Python wrapper's per-encoding conversion costs as much as the tokenising)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=add_special_tokens)]
        encoded = self.tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(zip(encoded["input_ids"], encoded["offset_mapping"]))

    def _compat_prefix_counts(self, prepared) -> dict[int, list[list[tuple[int, int]]]]:
        """Per example and assistant turn, (s, e) token counts of each block's content prefixes,
        tokenised without special tokens in one batched call."""
        prefixes: list[str] = []
        where: list[tuple[int, int]] = []  # (example index, turn number) per pair of prefixes
        for index, _, turns in prepared:
            for turn_number, (_, _, _, content) in enumerate(turns):
                for match in CONTEXT_BLOCK.finditer(content):
                    prefixes += [content[: match.start()], content[: match.end()]]
                    where.append((index, turn_number))
        counts: dict[int, list[list[tuple[int, int]]]] = {
            index: [[] for _ in turns] for index, _, turns in prepared
        }
        if prefixes:
            lengths = [len(ids) for ids, _ in self._tokenize(prefixes, add_special_tokens=False)]
            for pair, (index, turn_number) in enumerate(where):
                counts[index][turn_number].append((lengths[2 * pair], lengths[2 * pair + 1]))
        return counts
