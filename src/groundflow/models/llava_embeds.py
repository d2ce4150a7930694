"""A LLaVA's input embeddings with each image encoded once, however many rows show it.

A tree search asks about one image many times in a round: G continuations of each kept chain, and
a value for every candidate prefix. Passing `pixel_values` per row would run the vision tower and
projector once per row (and `generate` repeats them for each returned sequence). Here the images
are encoded once (`encode_images`), and each row's `<image>` placeholders are filled from its
image's features (`embed_with_images`); the model then runs on `inputs_embeds`, which both
`forward` and `generate` take. Rows without an image hold no placeholder and get none.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _llava(model):
    """The LlavaForConditionalGeneration under a peft wrapper or a value-head wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "backbone", inner)


@torch.inference_mode()
def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """[n_images, image_tokens, hidden]: the projected features the model splices in for `<image>`."""
    llava = _llava(model)
    config = llava.config
    outputs = llava.model.get_image_features(
        pixel_values=pixel_values.to(llava.device, llava.dtype),
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        return_dict=True,
    )
    return torch.stack(list(outputs.pooler_output))


def embed_with_images(model, input_ids: torch.Tensor, features: torch.Tensor | None,
                      image_of_row: Sequence[int | None]) -> torch.Tensor:
    """The token embeddings of `input_ids` with row r's `<image>` placeholders replaced by
    `features[image_of_row[r]]` (None: a text-only row, which must hold no placeholder)."""
    llava = _llava(model)
    if len(image_of_row) != input_ids.shape[0]:
        raise ValueError(f"{input_ids.shape[0]} rows but {len(image_of_row)} image indices")
    embeds = llava.get_input_embeddings()(input_ids)
    placeholders = input_ids == llava.config.image_token_id
    for row, image in enumerate(image_of_row):
        count = int(placeholders[row].sum())
        if image is None:
            if count:
                raise ValueError(f"row {row} has no image but holds {count} image placeholders")
            continue
        if features is None:
            raise ValueError(f"row {row} shows image {image} but no features were given")
        tokens = features[image]
        if count != tokens.shape[0]:
            raise ValueError(f"row {row} holds {count} image placeholders; its image has {tokens.shape[0]} features")
        embeds[row, placeholders[row]] = tokens.to(embeds.dtype)
    return embeds
