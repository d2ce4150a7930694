"""LLaVA-format conversations to token ids and loss labels, masked by character offsets.

A record's `conversations` is `[{"from": "human"|"gpt"|"system", "value": str}, ...]`; the first
human turn of an image record holds "<image>". The text the model trains on is the conversation
rendered by the chat template (the same template inference prompts with), so training and
generation see the same layout.

Which tokens are supervised is decided on characters, not on token ids: the rendered text is
built together with the character span of every assistant turn (its content plus the token that
ends the turn), the text is tokenised with an offset mapping, and a token is labelled when its
characters overlap a supervised span. Masks inside an answer (CINGS masks the retrieved passage)
are span arithmetic on `RenderedConversation.content_spans`, then `labels_for_spans`.

`chat_template` is a template, a format's name from `groundflow.train.chat_formats`
("vicuna_v1": LLaVA-1.5's stage-2 layout), or None for the tokenizer's / processor's own.

A LLaVA sees "<image>" as `num_image_tokens` copies of the image token (the processor expands
it before tokenising); `render_conversation` makes the same expansion so that the ids equal what
`processor(text=..., images=...)` produces, and image tokens are never labelled. A family whose
count depends on the image (Qwen2.5-VL, `models.vision_families`) keeps one image token per image
here; the training data expands it from the image itself (`train.data.RecordEncoder`).

Two loss masks (`LOSS_MASKS`, SFTConfig.loss_mask): "assistant_only" (the default: the assistant
turns and their end-of-turn token) and "all_but_pad_and_image" (GWYS' original cold-start SFT,
spec §3: every token of the rendered conversation, system and user text included, but image
tokens; padding is left out by the collator).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from groundflow.models.vision_families import processor_family
from groundflow.train.chat_formats import resolve_chat_template
from groundflow.train.config import ALL_BUT_PAD_AND_IMAGE, ASSISTANT_ONLY

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

Conversation = Sequence[dict[str, str]]
Span = tuple[int, int]
# (conversation, tokenizer or processor) -> (input_ids, labels); labels are IGNORE_INDEX where no loss is taken.
LossMaskFn = Callable[[list[dict], Any], tuple[list[int], list[int]]]


class ConversationError(ValueError):
    """A conversation that cannot be turned into a training example; str(error) is the reason."""


@dataclass(frozen=True)
class RenderedConversation:
    """The text a model trains on and where, in characters, its assistant turns are.

    assistant_spans: per assistant turn, everything the model writes after the inference prompt
        (`add_generation_prompt=True`), through the end-of-turn token: what the default mask
        trains on. content_spans: the message content alone, same order.
    add_special_tokens: whether the tokenizer must add its own BOS (the template did not write it).
    image_token / image_token_id: the expanded image placeholder, None for text-only models.
    """

    text: str
    assistant_spans: tuple[Span, ...]
    content_spans: tuple[Span, ...]
    add_special_tokens: bool
    image_token: str | None = None
    image_token_id: int | None = None
    num_images: int = 0


def text_tokenizer(tokenizer_or_processor):
    """The text tokenizer of a processor, or the tokenizer itself."""
    return getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)


def is_processor(tokenizer_or_processor) -> bool:
    return hasattr(tokenizer_or_processor, "image_processor") and hasattr(tokenizer_or_processor, "tokenizer")


def to_chat_messages(conversation: Conversation, *, structured: bool = False) -> list[dict]:
    """LLaVA turns -> chat messages.

    structured=False gives `{"role", "content": str}` (text chat templates). structured=True gives
    the multimodal form of HF processors' templates: `"<image>"` leaves the text and becomes an
    `{"type": "image"}` part ahead of it, which LLaVA-1.5's template renders as "<image>\\n".
    """
    messages = []
    for index, turn in enumerate(conversation):
        speaker = turn.get("from", turn.get("role"))
        if speaker not in ROLES:
            raise ConversationError(f"turn {index} has speaker {speaker!r}; expected one of {sorted(ROLES)}")
        value = turn.get("value", turn.get("content"))
        if not isinstance(value, str):
            raise ConversationError(f"turn {index} has no text value")
        role = ROLES[speaker]
        if not structured:
            messages.append({"role": role, "content": value})
            continue
        n_images = value.count(IMAGE_PLACEHOLDER)
        text = value.replace(IMAGE_PLACEHOLDER, "").strip() if n_images else value
        parts: list[dict] = [{"type": "image"} for _ in range(n_images)]
        parts.append({"type": "text", "text": text})
        messages.append({"role": role, "content": parts})
    return messages


def _message_text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


def _render(tokenizer_or_processor, messages: list[dict], chat_template: str | None, add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    chat_template = resolve_chat_template(chat_template)
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    return tokenizer_or_processor.apply_chat_template(messages, **kwargs)


def _special_strings(tokenizer, exclude: set[str]) -> list[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(token, "special", False):
            specials.add(str(token.content) if hasattr(token, "content") else str(token))
    return sorted(s for s in specials if s and s not in exclude)


_IMAGE_TOKEN_COUNTS: dict[int, tuple[Any, int]] = {}


def _measure_image_tokens(processor) -> int:
    from PIL import Image

    crop = getattr(processor.image_processor, "crop_size", None) or {}
    side = int(crop.get("height", 32)) if isinstance(crop, dict) else 32
    image = Image.new("RGB", (side, side), (0, 0, 0))
    encoded = processor(text=[processor.image_token], images=[image], return_tensors="np")
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return int((np.asarray(encoded["input_ids"]) == image_id).sum())


def num_image_tokens(processor) -> int:
    """How many image tokens the processor expands one "<image>" into, measured by running it once
    (so it is exactly what `processor(text, images)` does, CLS handling included).

    Raises ValueError for a processor whose count depends on each image (Qwen2.5-VL): there is no
    one count (`models.vision_families.image_tokens` counts one image)."""
    family = processor_family(processor)
    if family is not None and family.tokens_vary_per_image:
        raise ValueError(f"{type(processor).__name__} expands each image into a number of tokens that depends on "
                         "the image's size: count them per image (groundflow.models.vision_families.image_tokens)")
    cached = _IMAGE_TOKEN_COUNTS.get(id(processor))
    if cached is None or cached[0] is not processor:
        cached = (processor, _measure_image_tokens(processor))
        _IMAGE_TOKEN_COUNTS[id(processor)] = cached
    return cached[1]


def image_tokens_vary(processing) -> bool:
    """Whether `processing` is the processor of a family whose image token count depends on each
    image (Qwen2.5-VL): its rendered conversations keep one image token per image."""
    family = processor_family(processing)
    return family is not None and family.tokens_vary_per_image


def render_conversation(conversation: Conversation, tokenizer, *, chat_template: str | None = None) -> RenderedConversation:
    """Render `conversation` with the chat template and locate its assistant turns by characters.

    Each assistant turn is found as the difference between the render of the turns before it
    (with the generation prompt, i.e. the inference prompt) and the render through it, so the
    supervised span is exactly what generation has to produce; this needs a template whose renders
    of a prefix of the conversation are prefixes of the full render, which is checked. The turn's
    end-of-turn token is the first special token the template writes after the content; a
    template that writes none (LLaVA-1.5's HF template ends an answer with a space) gets the
    tokenizer's EOS inserted after the content, as LLaVA-1.5's own training appends "</s>", so a
    trained model learns to stop.

    Image tokens are expanded to the processor's fixed count; where the count depends on the image
    (`image_tokens_vary`), each image keeps one token, which the training data expands.
    """
    tok = text_tokenizer(tokenizer)
    processor = tokenizer if is_processor(tokenizer) else None
    messages = to_chat_messages(conversation, structured=processor is not None)
    full = _render(tokenizer, messages, chat_template, add_generation_prompt=False)

    image_token = getattr(processor, "image_token", None) if processor is not None else None
    # The pad token is not excluded: a tokenizer padded with its end-of-turn token (Llama-3.1 with
    # pad = <|eot_id|>) would then find no end of turn and get a second one appended.
    specials = _special_strings(tok, exclude={image_token or IMAGE_PLACEHOLDER})
    eos = tok.eos_token
    insertions: list[int] = []  # positions in `full` where EOS goes in
    turns: list[tuple[int, int, int, int]] = []  # (turn_start, content_start, content_end, turn_end) in `full`
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], chat_template, add_generation_prompt=True)
        last = index + 1 == len(messages)  # the render through the last turn is `full` itself
        through = full if last else _render(tokenizer, messages[: index + 1], chat_template, add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise ConversationError(
                f"the chat template does not render assistant turn {index} as an extension of the turns before it"
            )
        content = _message_text(message).strip()
        offset = through.find(content, len(before))
        if offset < 0:
            raise ConversationError(f"assistant turn {index}'s text is not in the rendered conversation")
        content_end = offset + len(content)
        tail = through[content_end:]
        hits = [(tail.find(s), s) for s in specials if tail.find(s) >= 0]
        if hits:
            position, token = min(hits)
            turns.append((len(before), offset, content_end, content_end + position + len(token)))
        else:
            if not eos:
                raise ConversationError("the chat template ends no assistant turn with a special token and the tokenizer has no EOS")
            insertions.append(content_end)
            turns.append((len(before), offset, content_end, -1))

    # Apply EOS insertions, shifting every later position.
    text_parts, shifted_turns, cursor = [], [], 0
    shift = 0
    for turn_start, content_start, content_end, turn_end in turns:
        if turn_end < 0:
            text_parts.append(full[cursor:content_end])
            text_parts.append(eos)
            cursor = content_end
            turn_end = content_end + len(eos)
            shifted_turns.append((turn_start + shift, content_start + shift, content_end + shift, turn_end + shift))
            shift += len(eos)
        else:
            shifted_turns.append((turn_start + shift, content_start + shift, content_end + shift, turn_end + shift))
    text_parts.append(full[cursor:])
    text = "".join(text_parts)

    num_images = 0
    image_token_id = None
    if processor is not None:
        image_token_id = tok.convert_tokens_to_ids(image_token)
        num_images = text.count(image_token)
        if num_images and not image_tokens_vary(processor):
            text, shifted_turns = _expand_token(text, shifted_turns, image_token, num_image_tokens(processor))

    bos = tok.bos_token
    return RenderedConversation(
        text=text,
        assistant_spans=tuple((start, end) for start, _, _, end in shifted_turns),
        content_spans=tuple((start, end) for _, start, end, _ in shifted_turns),
        add_special_tokens=not (bos and text.startswith(bos)),
        image_token=image_token,
        image_token_id=image_token_id,
        num_images=num_images,
    )


def end_of_turn_token(tokenizer, *, chat_template: str | None = None) -> str:
    """The token that ends an assistant turn in training: the special token the template writes
    after the answer (Llama-3: <|eot_id|>), or the EOS `render_conversation` appends where it writes
    none. Generation must stop on it, so it belongs in a trained checkpoint's stop tokens."""
    probe = [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Yes"}]
    rendered = render_conversation(probe, tokenizer, chat_template=chat_template)
    (_, content_end), (_, turn_end) = rendered.content_spans[0], rendered.assistant_spans[0]
    ending = rendered.text[content_end:turn_end]
    tok = text_tokenizer(tokenizer)
    for token in sorted({*_special_strings(tok, exclude=set()), tok.eos_token or ""}, key=len, reverse=True):
        if token and ending.endswith(token):
            return token
    raise ConversationError(f"the assistant turn ends with {ending!r}, which is no special token")


def _expand_token(text: str, turns: list[tuple[int, ...]], token: str, copies: int):
    """Replace each `token` by `copies` of it, moving character positions after it accordingly."""
    starts = []
    position = text.find(token)
    while position >= 0:
        starts.append(position)
        position = text.find(token, position + len(token))
    growth = len(token) * (copies - 1)

    def moved(p: int) -> int:
        return p + growth * bisect.bisect_right(starts, p - 1)  # occurrences starting before p

    expanded = text.replace(token, token * copies)
    return expanded, [tuple(moved(p) for p in turn) for turn in turns]


def encode_with_offsets(rendered: RenderedConversation, tokenizer) -> tuple[list[int], list[Span]]:
    """Token ids of the rendered text and each token's character span in it."""
    tok = text_tokenizer(tokenizer)
    encoded = tok(rendered.text, add_special_tokens=rendered.add_special_tokens, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]


def labels_for_spans(
    input_ids: Sequence[int], offsets: Sequence[Span], spans: Sequence[Span], *, never: Sequence[int] = ()
) -> list[int]:
    """Labels that keep a token's id where its characters overlap one of `spans`, else IGNORE_INDEX.

    Tokens with an empty span (special tokens added by the tokenizer) are never labelled, nor are
    ids in `never` (image tokens). Overlap rather than containment, because byte-level BPE glues a
    leading space onto the answer's first word (" A" after "ASSISTANT:"), and that token is the
    one the model must produce.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    if len(ids) == 0:
        return []
    offsets_array = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets_array[:, 0], offsets_array[:, 1]
    supervised = np.zeros(len(ids), dtype=bool)
    for span_start, span_end in spans:
        supervised |= (starts < span_end) & (ends > span_start)
    supervised &= ends > starts
    if len(never):
        supervised &= ~np.isin(ids, np.asarray(never, dtype=np.int64))
    return np.where(supervised, ids, IGNORE_INDEX).tolist()


def truncate_example(
    input_ids: Sequence[int], labels: Sequence[int], max_length: int, *, image_token_id: int | None = None
) -> tuple[list[int], list[int]]:
    """Keep the first `max_length` tokens of ids and labels together (alignment is positional).

    A cut through an image's token block would leave the model fewer image tokens than image
    features, so it is refused with the reason.
    """
    if len(input_ids) != len(labels):
        raise ConversationError(f"{len(input_ids)} input ids but {len(labels)} labels")
    if len(input_ids) <= max_length:
        return list(input_ids), list(labels)
    if image_token_id is not None:
        ids = np.asarray(input_ids)
        kept = int((ids[:max_length] == image_token_id).sum())
        total = int((ids == image_token_id).sum())
        if kept != total:
            raise ConversationError(
                f"max_length {max_length} cuts through the image tokens ({kept} of {total} kept); raise max_length"
            )
    return list(input_ids[:max_length]), list(labels[:max_length])


def assistant_only_labels(
    conversation: Conversation, tokenizer, *, chat_template: str | None = None, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with a loss on the assistant turns only: what the model writes after
    the inference prompt (the content, with any separator the template puts before it) and the
    token that ends the turn; system, user and image tokens get IGNORE_INDEX.

    `tokenizer` is a tokenizer, or for a LLaVA its processor (whose chat template renders and whose
    image token count expands "<image>"). The result is cut to `max_length` tokens.
    """
    rendered = render_conversation(conversation, tokenizer, chat_template=chat_template)
    input_ids, offsets = encode_with_offsets(rendered, tokenizer)
    never = [rendered.image_token_id] if rendered.image_token_id is not None else []
    labels = labels_for_spans(input_ids, offsets, rendered.assistant_spans, never=never)
    return truncate_example(input_ids, labels, max_length, image_token_id=rendered.image_token_id)


def assistant_mask_fn(*, chat_template: str | None = None, max_length: int) -> LossMaskFn:
    """`assistant_only_labels` as a LossMaskFn (the trainer's default)."""

    def mask(conversation, tokenizer):
        return assistant_only_labels(conversation, tokenizer, chat_template=chat_template, max_length=max_length)

    return mask


def all_but_pad_and_image_labels(
    conversation: Conversation, tokenizer, *, chat_template: str | None = None, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with a loss on every token of the rendered conversation but image
    tokens: system prompt, user text, vision start/end markers, the answers and their end-of-turn
    tokens. GWYS' cold-start SFT (spec §3: labels = input_ids with pad and image tokens masked);
    the collator leaves padding out. A token the tokenizer adds outside the text (a BOS) has no
    characters and is not labelled; it starts the sequence, where no label is ever read."""
    rendered = render_conversation(conversation, tokenizer, chat_template=chat_template)
    input_ids, offsets = encode_with_offsets(rendered, tokenizer)
    never = [rendered.image_token_id] if rendered.image_token_id is not None else []
    labels = labels_for_spans(input_ids, offsets, [(0, len(rendered.text))], never=never)
    return truncate_example(input_ids, labels, max_length, image_token_id=rendered.image_token_id)


LOSS_MASKS = {ASSISTANT_ONLY: assistant_only_labels, ALL_BUT_PAD_AND_IMAGE: all_but_pad_and_image_labels}


def loss_mask_fn(name: str, *, chat_template: str | None = None, max_length: int) -> LossMaskFn:
    """The LossMaskFn of a named mask (`LOSS_MASKS`)."""
    try:
        labels = LOSS_MASKS[name]
    except KeyError:
        raise ValueError(f"unknown loss mask {name!r}; one of {sorted(LOSS_MASKS)}") from None

    def mask(conversation, tokenizer):
        return labels(conversation, tokenizer, chat_template=chat_template, max_length=max_length)

    return mask
