"""Masked-LM scoring: the perplexity of a masked span, for every span text in padded batches.

The pure parts (which tokens cover a span, masking, perplexity) are in groundflow.generate.spans;
this module is the model call, kept with the other model calls so that method code stays free of
torch.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

from groundflow.generate.spans import SpanText, mask_positions, perplexity, span_token_positions

log = logging.getLogger(__name__)


def max_tokens(model, tokenizer) -> int:
    """The longest token sequence the model accepts (tokenizer limit and position table)."""
    limits = [int(tokenizer.model_max_length)] if tokenizer.model_max_length < 1_000_000 else []
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions:
        # RoBERTa's position ids start after the padding index, so 2 positions are never usable
        roberta_like = getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert")
        limits.append(int(max_positions) - (2 if roberta_like else 0))
    return min(limits) if limits else 512


def score_span_texts(model, tokenizer, items: Sequence[SpanText], *, batch_size: int) -> list[float]:
    """Perplexity of the masked span of each item, scored in padded batches of `batch_size`.

    NaN for an item whose span covers no token or whose text is longer than the model accepts.
    Items are grouped by token length so batches carry little padding; the result is in input
    order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results = [math.nan] * len(items)
    if not items:
        return results
    encoded = tokenizer(
        [item.text for item in items],
        add_special_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        truncation=False,
    )
    limit = max_tokens(model, tokenizer)
    prepared: list[tuple[int, list[int], list[int], list[int]]] = []
    for index, item in enumerate(items):
        ids = encoded["input_ids"][index]
        if len(ids) > limit:
            log.warning("text of %d tokens exceeds the model's %d: %r", len(ids), limit, item.text[:80])
            continue
        positions = span_token_positions(
            encoded["offset_mapping"][index], encoded["special_tokens_mask"][index], item.start, item.end
        )
        if not positions:
            continue
        masked, targets = mask_positions(ids, positions, tokenizer.mask_token_id)
        prepared.append((index, masked, positions, targets))

    prepared.sort(key=lambda entry: len(entry[1]))
    device = model.device
    pad_id = tokenizer.pad_token_id
    with torch.inference_mode():
        for batch_start in range(0, len(prepared), batch_size):
            batch = prepared[batch_start : batch_start + batch_size]
            width = max(len(entry[1]) for entry in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            rows, cols, targets, counts = [], [], [], []
            for row, (_, masked, positions, target_ids) in enumerate(batch):
                input_ids[row, : len(masked)] = torch.tensor(masked)
                attention_mask[row, : len(masked)] = 1
                rows += [row] * len(positions)
                cols += positions
                targets += target_ids
                counts.append(len(positions))
            logits = model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
            ).logits
            masked_logits = logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
            log_probs = torch.log_softmax(masked_logits.float(), dim=-1)
            target_log_probs = log_probs.gather(-1, torch.tensor(targets, device=device)[:, None])[:, 0]
            per_item = torch.split(target_log_probs.cpu(), counts)
            for (index, *_), values in zip(batch, per_item):
                results[index] = perplexity(values.double().numpy())
    return results


class MaskedLMScorer:
    """A loaded masked LM as the span scorer of groundflow.cvc.causality.tag_causality."""

    def __init__(self, model, tokenizer, *, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def score_spans(self, items: Sequence[SpanText]) -> list[float]:
        return score_span_texts(self.model, self.tokenizer, items, batch_size=self.batch_size)

    def describe(self) -> dict:
        path = getattr(self.model, "name_or_path", None) or getattr(self.model.config, "_name_or_path", "")
        return {"backend": "hf", "kind": "masked_lm", "model": str(path), "dtype": str(self.model.dtype),
                "device": str(self.model.device), "batch_size": self.batch_size}


def load_masked_lm_scorer(spec, *, batch_size: int) -> MaskedLMScorer:
    """The scorer of a masked LM named by a ModelSpec (a tiny local folder or a hub id)."""
    from groundflow.models.masked_lm import load_masked_lm

    model, tokenizer = load_masked_lm(spec)
    return MaskedLMScorer(model, tokenizer, batch_size=batch_size)


__all__ = ["MaskedLMScorer", "load_masked_lm_scorer", "max_tokens", "score_span_texts"]
