"""Value scoring as the TSST original does it: one forward per candidate prefix (batch 1, no KV
cache), each forward running the vision tower on the question's image again
(`value_model.generate(input_ids, images)` per candidate in MLLM_evaluator.beam_sample).

Rows are rendered exactly as `groundflow.models.value_model.ValueScorer` renders them, so the two
give the same values (tests/stage/test_value_model.py); bench/value_scoring.py times them.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch

from groundflow.models.llava import CLIP_IMAGE_MEAN, mean_fill, pad_to_square
from groundflow.models.value_model import ValueScorer


@torch.inference_mode()
def score_one_at_a_time(model, processor, prompts: Sequence[str], prefixes: Sequence[str], images: Sequence,
                        groups: Sequence[Hashable], *, pad_square: bool = True) -> list[float]:
    renderer = ValueScorer(model, processor)  # its row rendering only
    fill = mean_fill(getattr(getattr(processor, "image_processor", None), "image_mean", None) or CLIP_IMAGE_MEAN)
    pixels_of_group: dict = {}
    values = []
    for prompt, prefix, image, group in zip(prompts, prefixes, images, groups):
        ids = torch.tensor([renderer.encode_row(prompt, prefix, has_image=image is not None)], device=model.device)
        if image is None:
            output = model(input_ids=ids)
        else:
            if group not in pixels_of_group:  # the original preprocesses a question's image once
                picture = pad_to_square(image.convert("RGB"), fill=fill) if pad_square else image.convert("RGB")
                pixels_of_group[group] = processor.image_processor(images=[picture], return_tensors="pt")["pixel_values"]
            pixel_values = pixels_of_group[group].to(model.device, model.dtype)
            output = model(input_ids=ids, pixel_values=pixel_values)
        values.append(float(output.values[0]))
    return values
