"""Training data of the SFT trainer: records -> tokenised, masked examples, the dataset that
tokenises them lazily, the length estimates the modality-grouped sampler orders them by, and the
collator that pads batches and loads images.

A record's structure is checked once, up front and cheaply (no tokenisation): a record that fails
is skipped with its id and reason. Tokenisation happens per item, in `__getitem__` (in the
dataloader's workers), so a job over LLaVA's 665k records starts at once on every rank. A record
that fails only when tokenised (a mask the function refuses, image tokens that do not match its
image, no supervised token left within max_length) is trained on fully masked, as LLaVA masks a
conversation whose tokenisation does not match: the item becomes a one-token row with no label and
no image, which adds nothing to the loss, and it is logged and carried through the batch so that
the trainer names it (`masked` in train_summary.json). It never stops the job and never vanishes.

Images by vision family (`models.vision_families`; `vision` None: a text-only model): a LLaVA's
"<image>" is the processor's fixed number of tokens and its images are padded to a square; a
Qwen2.5-VL image is resized to a grid that depends on its size, so the encoder expands each image's
one `<|image_pad|>` into that image's count (its processor's resize rule on the image's own size,
never labelled) and the collator passes the grids (`image_grid_thw`) and each token's modality
(`mm_token_type_ids`, which the model's 3-D positions are built from), checking that every row's
image tokens match its image's grid.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from PIL import Image

from groundflow.models.llava import pad_to_square
from groundflow.models.vision_families import VisionFamily, image_pixel_bounds, image_tokens, processor_family
from groundflow.train.conversations import (
    IGNORE_INDEX,
    ConversationError,
    LossMaskFn,
    num_image_tokens,
    text_tokenizer,
    truncate_example,
)
from groundflow.vision.image_io import ImageError, load_rgb

log = logging.getLogger(__name__)

# The batch key that carries the ids and reasons of items trained fully masked (a list, not a tensor).
MASKED_KEY = "masked"


@dataclass
class TrainExample:
    id: str
    input_ids: list[int]
    labels: list[int]
    image: str | None = None


class ExampleError(ValueError):
    """A record that cannot be trained on; the message names the record and the reason."""


def is_pretokenized(record: dict) -> bool:
    return record.get("input_ids") is not None and record.get("labels") is not None


def record_id(record: dict, index: int) -> str:
    return str(record.get("id", index))


def structure_problem(record: dict, record_id: str, *, root: Path | None, vision: VisionFamily | None) -> str | None:
    """Why a record cannot be trained on, from its structure and files alone; None when it can."""
    conversation = record.get("conversations")
    if not is_pretokenized(record) and (not isinstance(conversation, list) or not conversation):
        return f"record {record_id} has no conversations"
    image = record.get("image")
    if image and not vision:
        return f"record {record_id} has image {image!r} but the model is text-only"
    if image:
        if root is None:
            return f"record {record_id} has image {image!r} but no image_root was given"
        if not (root / image).is_file():
            return f"record {record_id}: missing image file {root / image}"
    return None


class RecordEncoder:
    """Tokenises and masks one record (or takes its ahead-tokenised ids) and checks the result.

    For a family whose image token count depends on the image (`vision.tokens_vary_per_image`),
    the record's one image token is expanded to its image's count, read from the image file's size
    under `image_root`; `tokens_per_image` is then the count of an image at the processor's pixel
    cap, an upper bound used only to estimate lengths."""

    def __init__(self, tokenizer_or_processor, mask_fn: LossMaskFn, *, max_length: int, vision: VisionFamily | None,
                 image_root: str | os.PathLike | None = None):
        self.processing = tokenizer_or_processor
        self.mask_fn = mask_fn
        self.max_length = max_length
        self.vision = vision
        self.image_root = Path(image_root) if image_root is not None else None
        self.image_token_id = None
        self.tokens_per_image = 0
        if vision:
            tok = text_tokenizer(tokenizer_or_processor)
            self.image_token_id = tok.convert_tokens_to_ids(tokenizer_or_processor.image_token)
            if vision.tokens_vary_per_image:
                image_processor = tokenizer_or_processor.image_processor
                cell = image_processor.patch_size * image_processor.merge_size
                self.tokens_per_image = image_pixel_bounds(tokenizer_or_processor)[1] // cell**2
            else:
                self.tokens_per_image = num_image_tokens(tokenizer_or_processor)

    def image_token_count(self, image: str) -> int:
        """The tokens the processor gives this image: its resize rule on the file's width and height
        (the header alone is read; the collator decodes it)."""
        if self.image_root is None:
            raise ValueError(f"image {image!r} but no image_root was given")
        try:
            with Image.open(self.image_root / image) as opened:
                width, height = opened.size
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"unreadable image {self.image_root / image}: {error}") from None
        return image_tokens(self.processing, width, height)

    def expand_image_tokens(self, input_ids: list[int], labels: list[int], image: str) -> tuple[list[int], list[int]]:
        """Each image token becomes the image's count of them, unlabelled."""
        found = sum(1 for t in input_ids if t == self.image_token_id)
        if found != 1:
            raise ValueError(f"{found} image tokens in the rendered conversation, expected 1 for its image")
        at = input_ids.index(self.image_token_id)
        copies = self.image_token_count(image)
        return (input_ids[:at] + [self.image_token_id] * copies + input_ids[at + 1:],
                labels[:at] + [IGNORE_INDEX] * copies + labels[at + 1:])

    def __call__(self, record: dict, record_id: str) -> TrainExample:
        image = record.get("image") or None
        per_image = bool(self.vision and self.vision.tokens_vary_per_image)
        try:
            if is_pretokenized(record):
                if per_image:
                    raise ValueError(f"ahead-tokenised records are not supported for {self.vision.model_type}, whose "
                                     "image token count depends on each image; give conversations")
                input_ids = [int(token) for token in record["input_ids"]]
                labels = [int(label) for label in record["labels"]]
            else:
                input_ids, labels = self.mask_fn(record["conversations"], self.processing)
                if per_image and image:
                    input_ids, labels = self.expand_image_tokens(list(input_ids), list(labels), image)
            input_ids, labels = truncate_example(input_ids, labels, self.max_length, image_token_id=self.image_token_id)
        except (ConversationError, ValueError) as error:
            raise ExampleError(f"record {record_id}: {error}") from None
        if self.image_token_id is not None:
            found = sum(1 for t in input_ids if t == self.image_token_id)
            if not image:
                expected = 0
            elif per_image:
                expected = found  # expanded from the image just above: its count by construction
            else:
                expected = self.tokens_per_image
            if found != expected:
                raise ExampleError(
                    f"record {record_id} has {found} image tokens, expected {expected} for {1 if image else 0} image(s)"
                )
        if all(label == IGNORE_INDEX for label in labels[1:]):
            raise ExampleError(f"record {record_id} has no supervised token within max_length {self.max_length}")
        return TrainExample(record_id, list(input_ids), list(labels), image)


def build_examples(
    records: Sequence[dict],
    tokenizer_or_processor,
    mask_fn: LossMaskFn,
    *,
    max_length: int,
    image_root: str | os.PathLike | None,
    vision: VisionFamily | None,
) -> tuple[list[TrainExample], list[dict]]:
    """Tokenise and mask every record at once; (examples, skipped) where each skipped record has a
    reason. The eager form of `LazyExampleDataset` (same checks, same examples), for small sets
    and for comparing against it.

    A record is skipped, never silently dropped, when it has no conversation, an image that a
    text-only model cannot take or that is missing, labels the mask function refuses, an image
    token count that does not match its images, or no supervised token within max_length.

    A record that carries `input_ids` and `labels` was tokenised ahead (a tokenisation cache, e.g.
    CINGS's per-mode tables): it is taken as it is, with the same checks and truncation.
    """
    # The dataset's own checks and encoder, run on every record now: one definition of both paths.
    dataset = LazyExampleDataset(records, tokenizer_or_processor, mask_fn, max_length=max_length,
                                 image_root=image_root, vision=vision)
    examples, skipped = [], list(dataset.skipped)
    for record, rid in zip(dataset.records, dataset.ids):
        try:
            examples.append(dataset.encode(record, rid))
        except ExampleError as error:
            skipped.append({"id": rid, "reason": str(error)})
    return examples, skipped


def estimated_length(record: dict, tokens_per_image: int) -> int:
    """An example's length without tokenising it, as LLaVA estimates it for grouping: the words of
    its conversation plus the image's tokens (ahead-tokenised records: their ids)."""
    if is_pretokenized(record):
        return len(record["input_ids"])
    words = sum(len(str(turn.get("value", "")).split()) for turn in record["conversations"] if isinstance(turn, dict))
    return words + (tokens_per_image if record.get("image") else 0)


class LazyExampleDataset(Dataset):
    """The records that pass the structural checks, tokenised one item at a time.

    `skipped` holds the records refused up front ({id, reason}); `lengths` and `has_image` are the
    per-item estimates the modality-grouped sampler orders by. Ahead-tokenised records are checked
    in full up front, since that costs no tokenisation.
    """

    def __init__(
        self,
        records: Sequence[dict],
        tokenizer_or_processor,
        mask_fn: LossMaskFn,
        *,
        max_length: int,
        image_root: str | os.PathLike | None,
        vision: VisionFamily | None,
    ):
        root = Path(image_root) if image_root is not None else None
        self.encode = RecordEncoder(tokenizer_or_processor, mask_fn, max_length=max_length, vision=vision,
                                    image_root=root)
        tok = text_tokenizer(tokenizer_or_processor)
        # A masked item's one token: any real id works, since its label is ignored and its row is
        # attended to alone.
        self.filler_token_id = next(t for t in (tok.pad_token_id, tok.eos_token_id, 0) if t is not None)
        self.records: list[dict] = []
        self.ids: list[str] = []
        self.skipped: list[dict] = []
        for index, record in enumerate(records):
            rid = record_id(record, index)
            problem = structure_problem(record, rid, root=root, vision=vision)
            if problem is None and is_pretokenized(record):
                try:
                    self.encode(record, rid)
                except ExampleError as error:
                    problem = str(error)
            if problem is not None:
                self.skipped.append({"id": rid, "reason": problem})
                continue
            self.records.append(record)
            self.ids.append(rid)
        self.lengths = [estimated_length(r, self.encode.tokens_per_image) for r in self.records]
        self.has_image = [bool(r.get("image")) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        rid = self.ids[index]
        try:
            example = self.encode(self.records[index], rid)
        except ExampleError as error:
            log.warning("trained fully masked (no loss): %s", error)
            return {"input_ids": [self.filler_token_id], "labels": [IGNORE_INDEX], "image": None, "id": rid,
                    MASKED_KEY: str(error)}
        return {"input_ids": example.input_ids, "labels": example.labels, "image": example.image, "id": rid}


class SFTCollator:
    """Right-pads a batch; the attention mask comes from each row's length and padded labels are
    IGNORE_INDEX, so no token id (0 included) is ever taken for padding. The batch's images are
    loaded and processed together into `pixel_values`, in batch order, which is the order the
    model fills image tokens: for a LLaVA padded to a square, one row per image; for Qwen2.5-VL
    as they are, their patches concatenated, with `image_grid_thw` (one grid per image) and
    `mm_token_type_ids` (1 at image tokens, 0 elsewhere); each row's image tokens must number what
    its image's grid gives. Items trained fully masked are listed under MASKED_KEY ({id, reason}),
    for the trainer to record.

    vision: the model's family; None with a processor: the processor's own family (LLaVA's
    handling for a processor of no known family)."""

    def __init__(self, pad_token_id: int, *, processor=None, image_root: str | os.PathLike | None = None,
                 vision: VisionFamily | None = None):
        if pad_token_id is None:
            raise ValueError("the tokenizer has no pad token id")
        self.pad_token_id = int(pad_token_id)
        self.processor = processor
        self.image_root = Path(image_root) if image_root is not None else None
        self.vision = vision or (processor_family(processor) if processor is not None else None)
        self.per_image = bool(self.vision and self.vision.tokens_vary_per_image)
        self.image_token_id = None
        if self.per_image:
            if processor is None:
                raise ValueError(f"a {self.vision.model_type} model's batches need its processor")
            self.image_token_id = text_tokenizer(processor).convert_tokens_to_ids(processor.image_token)

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :length] = torch.as_tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :length] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        masked = [{"id": f["id"], "reason": f[MASKED_KEY]} for f in features if f.get(MASKED_KEY)]
        if masked:
            batch[MASKED_KEY] = masked
        if self.per_image:
            # The model's 3-D rotary positions are built from each token's modality (0 text, 1 image).
            batch["mm_token_type_ids"] = (input_ids == self.image_token_id).long() * attention_mask
        images = [f.get("image") for f in features if f.get("image")]
        if images:
            if self.processor is None:
                raise ValueError("records with images need a vision-language model's processor")
            pad = self.vision is None or self.vision.pad_to_square
            pictures = []
            for name in images:
                try:
                    picture = load_rgb(self.image_root / name)
                except ImageError as error:
                    raise ImageError(f"training image {name}: {error}") from None
                pictures.append(pad_to_square(picture) if pad else picture)
            processed = self.processor.image_processor(images=pictures, return_tensors="pt")
            batch["pixel_values"] = processed["pixel_values"]
            if self.per_image:
                batch["image_grid_thw"] = processed["image_grid_thw"]
                self.check_image_tokens(features, input_ids, processed["image_grid_thw"])
        return batch

    def check_image_tokens(self, features: Sequence[dict], input_ids: torch.Tensor, grids: torch.Tensor) -> None:
        """Each row's image tokens against its image's grid (tokens = t x h x w / merge_size**2)."""
        merge = int(self.processor.image_processor.merge_size) ** 2
        counts = (grids.prod(-1) // merge).tolist()
        rows = [row for row, feature in enumerate(features) if feature.get("image")]
        for row, expected in zip(rows, counts):
            found = int((input_ids[row] == self.image_token_id).sum())
            if found != expected:
                raise ValueError(f"record {features[row].get('id', row)}: {found} image tokens, but its image "
                                 f"{features[row]['image']} is {expected} tokens (grid {grids[rows.index(row)].tolist()})")


def modality_length_grouped_indices(
    lengths: Sequence[int], has_image: Sequence[bool], megabatch_size: int, generator: torch.Generator
) -> list[int]:
    """An epoch's order in which image and text-only examples fill separate megabatches, each
    megabatch sorted longest first, as LLaVA's `group_by_modality_length` orders them.

    Each modality is shuffled and cut into megabatches of `megabatch_size` (LLaVA: processes x
    per-device batch x accumulation, so every process's accumulated batch comes from one
    megabatch); the whole megabatches of both are shuffled together, the megabatch holding the
    longest example first so that running out of memory shows at the first step. Each modality's
    last, partial megabatch goes at the end, text-only then image, and stays unmixed: only the
    device batch that spans the boundary between the two can hold both, where LLaVA merges the two
    remainders into one mixed megabatch.
    """
    if len(lengths) != len(has_image):
        raise ValueError(f"{len(lengths)} lengths for {len(has_image)} modality flags")
    if megabatch_size < 1:
        raise ValueError(f"megabatch_size must be >= 1, not {megabatch_size}")
    whole, remainders = [], []
    for modality in (False, True):
        members = torch.tensor([i for i, flag in enumerate(has_image) if bool(flag) == modality], dtype=torch.long)
        shuffled = members[torch.randperm(len(members), generator=generator)].tolist()
        chunks = [shuffled[i : i + megabatch_size] for i in range(0, len(shuffled), megabatch_size)]
        chunks = [sorted(chunk, key=lambda i: lengths[i], reverse=True) for chunk in chunks]
        if chunks and len(chunks[-1]) < megabatch_size:
            remainders.append(chunks.pop())
        whole.extend(chunks)
    whole = [whole[i] for i in torch.randperm(len(whole), generator=generator).tolist()]
    if whole:
        longest = max(range(len(whole)), key=lambda m: lengths[whole[m][0]])
        whole[0], whole[longest] = whole[longest], whole[0]
    return [i for megabatch in whole + remainders for i in megabatch]


class ModalityLengthGroupedSampler(torch.utils.data.Sampler):
    """`modality_length_grouped_indices` over a dataset's estimated lengths, reshuffled every epoch
    from (seed, epoch), so a resumed run replays the interrupted epoch's order and skips exactly
    the batches it had trained on. Under several processes accelerate deals the batches out in
    turn, so each process's accumulated batch lies within one megabatch."""

    def __init__(self, lengths: Sequence[int], has_image: Sequence[bool], *, megabatch_size: int, seed: int):
        self.lengths = list(lengths)
        self.has_image = [bool(flag) for flag in has_image]
        self.megabatch_size = int(megabatch_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_length_grouped_indices(self.lengths, self.has_image, self.megabatch_size, generator))


def read_records(path: str | os.PathLike) -> list[dict]:
    """Training records: a LLaVA JSON list, or a Parquet table (e.g. tokenised `id, input_ids, labels`)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    records = json.loads(path.read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return records
