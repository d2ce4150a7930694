"""A scalar value model over a LLaVA or causal LM, its checkpoint format, and batched scoring.

`ValueModel` is the backbone (LlavaForConditionalGeneration, or a causal LM for text-only use)
plus `score_head = LayerNorm(hidden) -> Linear(hidden, 1)` in fp32, read at each row's last real
token: the decoder's final hidden state (after its last norm, as the reference's
`hidden_states[-1]`), taken from the base model without the LM head, so no vocabulary logits are
ever computed. The value is unbounded by default, as the reference's; `bounded=True` applies a
sigmoid (a departure from the reference, recorded in value_config.json).

Rows are rendered by `value_example`: the conversation in the training chat template with the
assistant prefix closed by EOS, so the head reads the hidden state of that closing EOS in training
and in scoring alike. Position ids come from the attention mask, so left and right padding give the
same values.

A checkpoint folder holds the backbone in HF format (a plain LLaVA or causal LM that any loader
reads), its processor or tokenizer, the head as `value_head.safetensors` and `value_config.json`.
A folder without the head file is a plain backbone: `load_value_model` gives it a fresh head,
initialised from `head_seed` as the reference's post_init (Linear weight ~ N(0, 0.02), bias 0,
LayerNorm 1 / 0).

`ValueScorer` scores many (prompt, prefix, image) rows: each distinct image encoded once
(`models.llava_embeds`), each question's shared prompt run once into a KV cache, then the rows'
own tokens in padded batches over those caches; one-row-at-a-time scoring gives the same values.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Hashable, Sequence

import torch
from PIL import Image
from torch import nn

from groundflow.io.artifacts import atomic_directory
from groundflow.models.llava import CLIP_IMAGE_MEAN, mean_fill, pad_to_square
from groundflow.models.llava_embeds import embed_with_images, encode_images
from groundflow.models.spec import ModelSpec, seeded
from groundflow.train.conversations import (
    IMAGE_PLACEHOLDER,
    ConversationError,
    assistant_only_labels,
    num_image_tokens,
    text_tokenizer,
)

log = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_CONFIG_FILE = "value_config.json"
VALUE_FORMAT = "groundflow.value_model/1"
DEFAULT_CONVERSATION_FORMAT = "vicuna_v1"
HEAD_NAME = "score_head"
# The longest a rendered row may be when scoring: a cut would remove the EOS the value is read at.
NO_LIMIT = 1 << 30


@dataclass(frozen=True)
class ValueConfig:
    """What a value checkpoint needs beyond its backbone; stored as value_config.json."""

    hidden_size: int
    bounded: bool = False  # sigmoid on the head's output; the reference's value is unbounded
    # The chat template (a groundflow.train.chat_formats name) rows are rendered in, in training and scoring.
    conversation_format: str = DEFAULT_CONVERSATION_FORMAT
    readout: str = "closing_eos"
    format: str = VALUE_FORMAT

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "ValueConfig | None":
        path = Path(folder) / VALUE_CONFIG_FILE
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        if values.get("format") != VALUE_FORMAT:
            raise ValueError(f"{path}: format {values.get('format')!r}, expected {VALUE_FORMAT!r}")
        return cls(**values)


@dataclass
class ValueOutput:
    values: torch.Tensor  # [batch] (or one per readout position), fp32


def text_hidden_size(backbone) -> int:
    config = backbone.config
    return int(getattr(config, "text_config", config).hidden_size)


def new_value_head(hidden_size: int, seed: int) -> nn.Sequential:
    """LayerNorm -> Linear(hidden, 1) in fp32, initialised as the reference's (from `seed`)."""
    with seeded(seed):
        head = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, 1))
        nn.init.normal_(head[1].weight, mean=0.0, std=0.02)
        nn.init.zeros_(head[1].bias)
    return head.float()


def last_real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last attended token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


class ValueModel(nn.Module):
    """Backbone + fp32 `score_head` read at each row's last real token; forward -> ValueOutput."""

    # peft's get_peft_model reads it (AttributeError without); "" = the wrapper has no inner prefix.
    base_model_prefix = ""
    # Trainer would otherwise take **kwargs in forward as a sign that the model scales its loss.
    accepts_loss_kwargs = False

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None, *, bounded: bool = False,
                 conversation_format: str = DEFAULT_CONVERSATION_FORMAT, head_seed: int = 0):
        super().__init__()
        self.backbone = backbone
        hidden = text_hidden_size(backbone)
        self.score_head = head if head is not None else new_value_head(hidden, head_seed)
        self.value_config = ValueConfig(hidden_size=hidden, bounded=bounded, conversation_format=conversation_format)

    @property
    def config(self):
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    @property
    def is_llava(self) -> bool:
        return getattr(self.backbone.config, "text_config", None) is not None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        self.backbone.gradient_checkpointing_disable()

    def enable_input_require_grads(self):
        self.backbone.enable_input_require_grads()

    def _base(self) -> nn.Module:
        # The decoder without the LM head (LlavaModel / LlamaModel): no vocabulary logits.
        return getattr(self.backbone, self.backbone.base_model_prefix)

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, inputs_embeds=None,
                position_ids=None, past_key_values=None, **unused) -> ValueOutput:
        """Values [batch] at each row's last attended new token, whichever side the padding is on.
        With `past_key_values` (a shared prompt's cache), the 2-D mask covers the cached positions
        and the new ones, as in generation."""
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None:
            raise ValueError("give input_ids or inputs_embeds")
        new_tokens = reference.shape[1]
        if attention_mask is None:
            cached = past_key_values.get_seq_length() if past_key_values is not None else 0
            attention_mask = torch.ones((reference.shape[0], cached + new_tokens), dtype=torch.long, device=reference.device)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -new_tokens:]
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": past_key_values is not None}
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        hidden = self._base()(**kwargs).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, last_real_positions(attention_mask[:, -new_tokens:]).to(hidden.device)]
        with torch.autocast(device_type=last.device.type, enabled=False):  # the head stays fp32 under bf16 training
            values = self.score_head(last.float()).squeeze(-1)
        if self.value_config.bounded:
            values = torch.sigmoid(values)
        return ValueOutput(values=values)

    def prefill(self, input_ids=None, inputs_embeds=None):
        """The decoder's KV cache of one unpadded sequence (batch 1), for rows that continue it."""
        output = self._base()(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=True)
        return output.past_key_values


def head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    head = model.score_head
    return {name: tensor.detach().float().cpu().contiguous() for name, tensor in head.state_dict().items()}


def save_value_model(model: ValueModel, out_dir: str | os.PathLike, processing=None) -> Path:
    """The backbone in HF format, its processor/tokenizer, the head and value_config.json, written atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        tmp = Path(tmp)
        model.backbone.save_pretrained(tmp)
        if processing is not None:
            processing.save_pretrained(tmp)
        save_file(head_state(model), str(tmp / VALUE_HEAD_FILE))
        (tmp / VALUE_CONFIG_FILE).write_text(json.dumps(asdict(model.value_config), indent=2) + "\n")
    return out_dir


def load_value_head(folder: str | os.PathLike, hidden_size: int) -> nn.Sequential | None:
    """The saved head of a value checkpoint; None when the folder is a plain backbone."""
    from safetensors.torch import load_file

    path = Path(folder) / VALUE_HEAD_FILE
    if not path.is_file():
        return None
    head = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, 1)).float()
    state = load_file(str(path))
    try:
        head.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit a head over hidden size {hidden_size}: {error}") from None
    return head


def is_llava_folder(path: str) -> bool:
    from groundflow.train.model_prep import LLAVA_MODEL_TYPES, model_type_of

    return model_type_of(path) in LLAVA_MODEL_TYPES


def wrap_value_model(backbone, path: str | os.PathLike, *, head_seed: int = 0, bounded: bool | None = None) -> ValueModel:
    """`backbone` (loaded from `path`) with the head saved there, or a fresh one from `head_seed`.

    bounded: None takes the checkpoint's setting (False for a plain backbone); a value that
    contradicts a saved head's setting is refused, since the head was trained for the other output."""
    stored = ValueConfig.read(path)
    hidden = text_hidden_size(backbone)
    head = load_value_head(path, hidden)
    if head is None:
        log.info("%s holds no %s: a fresh value head (seed %d)", path, VALUE_HEAD_FILE, head_seed)
    elif stored is None:
        raise ValueError(f"{path} has {VALUE_HEAD_FILE} but no {VALUE_CONFIG_FILE}")
    if stored is not None and bounded is not None and bounded != stored.bounded:
        raise ValueError(f"{path} was trained with bounded={stored.bounded}; asked for bounded={bounded}")
    return ValueModel(
        backbone, head,
        bounded=stored.bounded if stored is not None else bool(bounded),
        conversation_format=stored.conversation_format if stored is not None else DEFAULT_CONVERSATION_FORMAT,
        head_seed=head_seed,
    )


def load_value_model(spec: ModelSpec | dict | str, *, head_seed: int = 0, bounded: bool | None = None):
    """(ValueModel in eval mode on the spec's device, processor or tokenizer) for inference."""
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    spec = ModelSpec.from_config(spec)
    if is_llava_folder(spec.path):
        processing = AutoProcessor.from_pretrained(spec.path)
        backbone = LlavaForConditionalGeneration.from_pretrained(spec.path, dtype=spec.torch_dtype())
    else:
        processing = AutoTokenizer.from_pretrained(spec.path)
        backbone = AutoModelForCausalLM.from_pretrained(spec.path, dtype=spec.torch_dtype())
    model = wrap_value_model(backbone, spec.path, head_seed=head_seed, bounded=bounded)
    model.to(spec.torch_device())
    model.score_head.float()
    model.eval()
    return model, processing


def value_conversation(prompt: str, prefix: str, *, has_image: bool) -> list[dict]:
    """A scored row as a LLaVA-format conversation: the user's prompt (after "<image>\\n" when the
    row has an image), the chain prefix as the assistant's turn."""
    if IMAGE_PLACEHOLDER in prompt:
        raise ValueError(f"a value prompt is given without {IMAGE_PLACEHOLDER}; the row's image adds it")
    if IMAGE_PLACEHOLDER in prefix:
        raise ValueError(f"a chain prefix holds {IMAGE_PLACEHOLDER}")
    return [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{prompt}" if has_image else prompt},
            {"from": "gpt", "value": prefix}]


def value_example(conversation: Sequence[dict], processing, *, chat_template: str | None,
                  max_length: int = NO_LIMIT) -> tuple[list[int], list[int]]:
    """(input_ids, assistant labels) of a value row: the conversation rendered in `chat_template`,
    ending with the EOS that closes the assistant's turn, where the value is read. Training and
    scoring both tokenise through here. A row longer than max_length is refused, not cut."""
    if not conversation or conversation[-1].get("from", conversation[-1].get("role")) not in ("gpt", "assistant"):
        raise ConversationError("a value record's conversation ends with the assistant's turn (the scored prefix)")
    input_ids, labels = assistant_only_labels(conversation, processing, chat_template=chat_template, max_length=NO_LIMIT)
    if len(input_ids) > max_length:
        raise ConversationError(f"{len(input_ids)} tokens, over max_length {max_length}: a cut would remove the "
                                "closing EOS the value is read at")
    eos = text_tokenizer(processing).eos_token_id
    if not input_ids or input_ids[-1] != eos:
        raise ConversationError("the rendered row does not end with the EOS that closes the assistant's turn")
    return input_ids, labels


class ValueScorer:
    """Values of (prompt, prefix, image) rows, scored in batches that share each question's prompt.

    `score(prompts, prefixes, images, groups)`: prompts[i] is the user text without the image
    placeholder, prefixes[i] the chain prefix, images[i] a PIL image or None, groups[i] any hashable;
    rows of one group show one image (the group's first row's), encoded once for all of them.
    Returns one float per row, in the given order.

    Every row is tokenised exactly as training tokenises it (`value_example`). The rows of a group
    share their leading tokens (system, question, image, "ASSISTANT:"): those run once per group,
    unpadded, into a KV cache that the group's rows share; the rows then run only their own tokens,
    up to `batch_size` rows of several groups per padded forward (memory: each row holds a copy of
    its group's cache during that forward). Causal attention makes this the same computation as one
    full forward per row (tests check it against tests/reference/value_scoring.py); it is what makes
    scoring a search round cheap.
    """

    # Stands in for the prefix while a group's conversation is rendered once; rows substitute theirs.
    SLOT = "\x00groundflow-value-prefix\x00"

    def __init__(self, model, processor, *, batch_size: int = 16, pad_square: bool = True,
                 conversation_format: str | None = None, padding_side: str = "right"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side is 'left' or 'right', not {padding_side!r}")
        self.model = model
        self.processor = processor
        self.batch_size = int(batch_size)
        self.pad_square = pad_square
        self.padding_side = padding_side
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        stored = getattr(inner, "value_config", None)
        self.conversation_format = conversation_format or (
            stored.conversation_format if stored is not None else DEFAULT_CONVERSATION_FORMAT)
        self.tokenizer = text_tokenizer(processor)
        self.pad_token_id = next(t for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if t is not None)
        image_processor = getattr(processor, "image_processor", None)
        self.fill = mean_fill(getattr(image_processor, "image_mean", None) or CLIP_IMAGE_MEAN)
        self.image_token_id = (self.tokenizer.convert_tokens_to_ids(processor.image_token)
                               if getattr(processor, "image_token", None) else None)
        self.tokens_per_image = num_image_tokens(processor) if self.image_token_id is not None else 0
        self.forwards = 0  # forwards run (shared-prompt passes and row passes), for benchmarks and tests

    def encode_row(self, prompt: str, prefix: str, *, has_image: bool) -> list[int]:
        """One row's ids through the training tokenisation (`value_example`)."""
        conversation = value_conversation(prompt, prefix, has_image=has_image)
        return value_example(conversation, self.processor, chat_template=self.conversation_format)[0]

    def encode_rows(self, prompts: Sequence[str], prefixes: Sequence[str], has_image: Sequence[bool],
                    groups: Sequence[Hashable]) -> list[list[int]]:
        """`encode_row` for many rows: each group's conversation is rendered once with a slot for
        the prefix and the texts are tokenised in one call. The first row with an image and the first
        without are checked against `encode_row`, so a template that rewrites the prefix is caught."""
        from groundflow.train.conversations import render_conversation

        rendered_of: dict = {}
        texts, special = [], []
        for row, (prompt, prefix, image, group) in enumerate(zip(prompts, prefixes, has_image, groups)):
            key = (group, prompt, image)
            if key not in rendered_of:
                try:
                    conversation = value_conversation(prompt, self.SLOT, has_image=image)
                except ValueError as error:
                    raise ValueError(f"row {row} (group {group!r}): {error}") from None
                rendered = render_conversation(conversation, self.processor, chat_template=self.conversation_format)
                if rendered.text.count(self.SLOT) != 1:
                    raise ValueError(f"row {row}: the {self.conversation_format} template does not render the prefix verbatim")
                rendered_of[key] = rendered
            rendered = rendered_of[key]
            if IMAGE_PLACEHOLDER in prefix:
                raise ValueError(f"row {row}: a chain prefix holds {IMAGE_PLACEHOLDER}")
            text = rendered.text.replace(self.SLOT, prefix)
            if rendered.num_images:
                # The image token is a special token, split off before the text is tokenised: one copy
                # tokenises as one id, so the block is collapsed here and expanded after (it is long).
                text = text.replace(rendered.image_token * self.tokens_per_image, rendered.image_token)
            texts.append(text)
            special.append(rendered.add_special_tokens)
        ids: list[list[int] | None] = [None] * len(texts)
        for flag in set(special):
            rows = [r for r in range(len(texts)) if special[r] == flag]
            encoded = self.tokenizer([texts[r] for r in rows], add_special_tokens=flag)["input_ids"]
            for r, row_ids in zip(rows, encoded):
                if has_image[r]:
                    expanded = []
                    for token in row_ids:
                        expanded.extend([token] * self.tokens_per_image if token == self.image_token_id else [token])
                    row_ids = expanded
                ids[r] = list(row_ids)
        checked = set()
        eos = self.tokenizer.eos_token_id
        for row, group in enumerate(groups):
            if not ids[row] or ids[row][-1] != eos:
                raise ValueError(f"row {row} (group {group!r}): the rendered row does not end with the closing EOS")
            if has_image[row] not in checked:
                checked.add(has_image[row])
                if ids[row] != self.encode_row(prompts[row], prefixes[row], has_image=has_image[row]):
                    raise ValueError(f"row {row} (group {group!r}): batched tokenisation differs from training's")
        return ids  # type: ignore[return-value]

    def _image_features(self, pictures: list[Image.Image]) -> torch.Tensor | None:
        if not pictures:
            return None
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is None:
            raise ValueError("rows with images need a LLaVA and its processor")
        prepared = [p.convert("RGB") if p.mode != "RGB" else p for p in pictures]
        if self.pad_square:
            prepared = [pad_to_square(p, fill=self.fill) for p in prepared]
        chunks = []
        for start in range(0, len(prepared), self.batch_size):
            pixel_values = image_processor(images=prepared[start:start + self.batch_size], return_tensors="pt")["pixel_values"]
            chunks.append(encode_images(self.model, pixel_values))
        return torch.cat(chunks)

    def _padded(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for slot, sequence in enumerate(sequences):
            span = slice(0, len(sequence)) if self.padding_side == "right" else slice(width - len(sequence), width)
            input_ids[slot, span] = torch.as_tensor(list(sequence), dtype=torch.long)
            attention_mask[slot, span] = 1
        device = self.model.device
        return input_ids.to(device), attention_mask.to(device)

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], prefixes: Sequence[str], images: Sequence[Image.Image | None],
              groups: Sequence[Hashable]) -> list[float]:
        n = len(prompts)
        if not (n == len(prefixes) == len(images) == len(groups)):
            raise ValueError(f"{n} prompts, {len(prefixes)} prefixes, {len(images)} images, {len(groups)} groups")
        if not n:
            return []
        image_of_group: dict[Hashable, int | None] = {}
        pictures: list[Image.Image] = []
        rows_of_group: dict[Hashable, list[int]] = {}
        for row, (image, group) in enumerate(zip(images, groups)):
            rows_of_group.setdefault(group, []).append(row)
            if group in image_of_group:
                if (image is None) != (image_of_group[group] is None):
                    raise ValueError(f"row {row}: group {group!r} mixes rows with and without an image")
                continue
            image_of_group[group] = None if image is None else len(pictures)
            if image is not None:
                pictures.append(image)
        has_image = [image_of_group[g] is not None for g in groups]
        try:
            ids = self.encode_rows(prompts, prefixes, has_image, groups)
        except (ConversationError, ValueError) as error:
            raise ValueError(str(error)) from None
        features = self._image_features(pictures)

        # Units: rows of one group with the same prompt (normally the whole group), at most
        # batch_size rows each, and the length of the leading tokens all of them share.
        units: list[tuple[Hashable, list[int], int]] = []
        for group, rows in rows_of_group.items():
            by_prompt: dict[str, list[int]] = {}
            for row in rows:
                by_prompt.setdefault(prompts[row], []).append(row)
            for same_prompt in by_prompt.values():
                for piece in range(0, len(same_prompt), self.batch_size):
                    unit_rows = same_prompt[piece:piece + self.batch_size]
                    shared = min(len(ids[r]) for r in unit_rows) - 1  # every row keeps >= 1 token of its own
                    first = ids[unit_rows[0]]
                    for r in unit_rows[1:]:
                        shared = next((k for k in range(shared) if ids[r][k] != first[k]), shared)
                    if self.image_token_id is not None and any(self.image_token_id in ids[r][shared:] for r in unit_rows):
                        raise ValueError(f"group {group!r}: the rows differ before the image ends")
                    units.append((group, unit_rows, shared))
        # Forwards of whole units, at most batch_size rows each (a unit never splits across two).
        forwards: list[list[int]] = []
        for index, (_, unit_rows, _) in enumerate(units):
            if forwards and sum(len(units[u][1]) for u in forwards[-1]) + len(unit_rows) <= self.batch_size:
                forwards[-1].append(index)
            else:
                forwards.append([index])
        values = [0.0] * n
        for members in forwards:
            for row, value in self._score_units([units[u] for u in members], ids, image_of_group, features).items():
                values[row] = value
        return values

    def _score_units(self, units, ids, image_of_group, features) -> dict[int, float]:
        """Each unit's shared tokens run once, unpadded (the causal fast path), into a KV cache;
        then all the units' rows run their own tokens in one padded forward over those caches, each
        row's positions continuing from its shared ones. Causal attention makes every row's value
        the one a full forward of the row alone gives."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        device = self.model.device
        caches = []
        for group, unit_rows, shared in units:
            prompt = torch.tensor([ids[unit_rows[0]][:shared]], device=device)
            image = image_of_group[group]
            if image is None:
                caches.append(inner.prefill(input_ids=prompt))
            else:
                caches.append(inner.prefill(inputs_embeds=embed_with_images(self.model, prompt, features, [image])))
            self.forwards += 1
        width = max(shared for _, _, shared in units)
        prompt_mask = torch.zeros((len(units), width), dtype=torch.long, device=device)
        for u, (_, _, shared) in enumerate(units):
            prompt_mask[u, :shared] = 1
        stacked = []  # per layer: (keys, values) [units, heads, width, head_dim], right-padded
        for layer in range(len(caches[0].layers)):
            pair = []
            for which in ("keys", "values"):
                tensors = [getattr(cache.layers[layer], which) for cache in caches]
                padded = tensors[0].new_zeros((len(units), *tensors[0].shape[1:2], width, tensors[0].shape[-1]))
                for u, tensor in enumerate(tensors):
                    padded[u, :, :tensor.shape[-2]] = tensor[0]
                pair.append(padded)
            stacked.append(pair)
        members = [(u, row) for u, (_, unit_rows, _) in enumerate(units) for row in unit_rows]
        members.sort(key=lambda m: len(ids[m[1]]) - units[m[0]][2], reverse=True)
        values: dict[int, float] = {}
        for start in range(0, len(members), self.batch_size):
            batch = members[start:start + self.batch_size]
            unit_index = torch.tensor([u for u, _ in batch], device=device)
            suffix_ids, suffix_mask = self._padded([ids[row][units[u][2]:] for u, row in batch])
            cache = DynamicCache()
            for keys, values_ in stacked:
                # Set directly rather than through update(), which would copy the rows once more.
                layer = DynamicLayer()
                selected_keys, selected_values = keys[unit_index], values_[unit_index]
                layer.lazy_initialization(selected_keys, selected_values)
                layer.keys, layer.values = selected_keys, selected_values
                cache.layers.append(layer)
            mask = torch.cat([prompt_mask[unit_index], suffix_mask], dim=1)
            output = self.model(input_ids=suffix_ids, attention_mask=mask, past_key_values=cache)
            self.forwards += 1
            for slot, (_, row) in enumerate(batch):
                values[row] = float(output.values[slot])
        return values
