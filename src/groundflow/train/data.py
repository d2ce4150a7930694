"""Training data of the SFT trainer: records -> tokenised, masked examples (with a reason for
each record left out), the dataset and the collator that pads batches and loads images."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from groundflow.models.llava import pad_to_square
from groundflow.train.conversations import (
    IGNORE_INDEX,
    ConversationError,
    LossMaskFn,
    num_image_tokens,
    text_tokenizer,
    truncate_example,
)
from groundflow.vision.image_io import ImageError, load_rgb


@dataclass
class TrainExample:
    id: str
    input_ids: list[int]
    labels: list[int]
    image: str | None = None


def build_examples(
    records: Sequence[dict],
    tokenizer_or_processor,
    mask_fn: LossMaskFn,
    *,
    max_length: int,
    image_root: str | os.PathLike | None,
    is_llava: bool,
) -> tuple[list[TrainExample], list[dict]]:
    """Tokenise and mask every record once; (examples, skipped) where each skipped record has a reason.

    A record is skipped, never silently dropped, when it has no conversation, an image that a
    text-only model cannot take or that is missing, labels the mask function refuses, an image
    token count that does not match its images, or no supervised token within max_length.

    A record that carries `input_ids` and `labels` was tokenised ahead (a tokenisation cache, e.g.
    CINGS's per-mode tables): it is taken as it is, with the same checks and truncation.
    """
    image_token_id = None
    tokens_per_image = 0
    if is_llava:
        tok = text_tokenizer(tokenizer_or_processor)
        image_token_id = tok.convert_tokens_to_ids(tokenizer_or_processor.image_token)
        tokens_per_image = num_image_tokens(tokenizer_or_processor)
    root = Path(image_root) if image_root is not None else None

    examples, skipped = [], []
    for index, record in enumerate(records):
        record_id = str(record.get("id", index))

        def skip(reason: str) -> None:
            skipped.append({"id": record_id, "reason": reason})

        conversation = record.get("conversations")
        pretokenized = record.get("input_ids") is not None and record.get("labels") is not None
        if not pretokenized and (not isinstance(conversation, list) or not conversation):
            skip(f"record {record_id} has no conversations")
            continue
        image = record.get("image")
        if image and not is_llava:
            skip(f"record {record_id} has image {image!r} but the model is text-only")
            continue
        if image:
            if root is None:
                skip(f"record {record_id} has image {image!r} but no image_root was given")
                continue
            if not (root / image).is_file():
                skip(f"record {record_id}: missing image file {root / image}")
                continue
        try:
            if pretokenized:
                input_ids = [int(token) for token in record["input_ids"]]
                labels = [int(label) for label in record["labels"]]
            else:
                input_ids, labels = mask_fn(conversation, tokenizer_or_processor)
            input_ids, labels = truncate_example(input_ids, labels, max_length, image_token_id=image_token_id)
        except (ConversationError, ValueError) as error:
            skip(f"record {record_id}: {error}")
            continue
        if image_token_id is not None:
            found = sum(1 for t in input_ids if t == image_token_id)
            expected = tokens_per_image if image else 0
            if found != expected:
                skip(f"record {record_id} has {found} image tokens, expected {expected} for {1 if image else 0} image(s)")
                continue
        if all(label == IGNORE_INDEX for label in labels[1:]):
            skip(f"record {record_id} has no supervised token within max_length {max_length}")
            continue
        examples.append(TrainExample(record_id, list(input_ids), list(labels), image or None))
    return examples, skipped


class ExampleDataset(Dataset):
    def __init__(self, examples: Sequence[TrainExample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels, "image": example.image, "id": example.id}


class SFTCollator:
    """Right-pads a batch; the attention mask comes from each row's length and padded labels are
    IGNORE_INDEX, so no token id (0 included) is ever taken for padding. For a LLaVA, the batch's
    images are loaded, padded to a square and processed together into `pixel_values` (one row per
    record with an image, in batch order, which is the order the model fills image tokens)."""

    def __init__(self, pad_token_id: int, *, processor=None, image_root: str | os.PathLike | None = None):
        if pad_token_id is None:
            raise ValueError("the tokenizer has no pad token id")
        self.pad_token_id = int(pad_token_id)
        self.processor = processor
        self.image_root = Path(image_root) if image_root is not None else None

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
        images = [f.get("image") for f in features if f.get("image")]
        if images:
            if self.processor is None:
                raise ValueError("records with images need a LLaVA processor")
            pictures = []
            for name in images:
                try:
                    pictures.append(pad_to_square(load_rgb(self.image_root / name)))
                except ImageError as error:
                    raise ImageError(f"training image {name}: {error}") from None
            batch["pixel_values"] = self.processor.image_processor(images=pictures, return_tensors="pt")["pixel_values"]
        return batch


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
