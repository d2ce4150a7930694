"""The vision-language model families the shared trainer knows, keyed by config.json's model_type.

A family says what differs between them and nothing else: the model class, where the language
model, vision tower and projector sit in the module tree (for LoRA targets and which parameters
train), and how an image becomes tokens:

- LLaVA ("llava"): the processor expands "<image>" into a fixed number of image tokens
  (`train.conversations.num_image_tokens`), and LLaVA-1.5 trains on images padded to a square.
- Qwen2.5-VL ("qwen2_5_vl"): the processor resizes each image (aspect kept, pixels between its
  min and max) to a grid of 14 px patches, merged 2 x 2, so one `<|image_pad|>` becomes
  grid_h x grid_w / 4 tokens: a count per image (`image_tokens`). The forward takes the grid of
  every image (`image_grid_thw`) and the modality of every token (`mm_token_type_ids`, from which
  it builds its 3-D rotary positions). No square padding.

Pure Python (no torch, no transformers import): configuration checks and the launcher use it.
"""

from __future__ import annotations

from dataclasses import dataclass

# An image's token count: fixed per processor, or from each image's own size.
FIXED = "fixed"
PER_IMAGE = "per_image"


@dataclass(frozen=True)
class VisionFamily:
    model_type: str
    model_class: str  # the transformers class that loads and saves a checkpoint of the family
    processor_class: str  # the transformers processor class of the family
    # Dotted module paths, matched as whole name parts anywhere in a parameter or module name.
    language_model: str
    vision_tower: str
    projector: str  # inside the vision tower for Qwen (its patch merger): checked first
    image_token_count: str  # FIXED or PER_IMAGE
    pad_to_square: bool

    @property
    def tokens_vary_per_image(self) -> bool:
        return self.image_token_count == PER_IMAGE

    def transformers_class(self):
        import transformers

        return getattr(transformers, self.model_class)

    def part_of(self, name: str) -> str:
        """Which part a parameter or module name belongs to: "projector", "vision_tower" or
        "language_model" (everything else: decoder, embeddings, LM head)."""
        dotted = f".{name}."
        if f".{self.projector}." in dotted:
            return "projector"
        if f".{self.vision_tower}." in dotted:
            return "vision_tower"
        return "language_model"

    def in_language_model(self, name: str) -> bool:
        return f".{self.language_model}." in f".{name}."


LLAVA = VisionFamily(
    model_type="llava",
    model_class="LlavaForConditionalGeneration",
    processor_class="LlavaProcessor",
    language_model="language_model",
    vision_tower="vision_tower",
    projector="multi_modal_projector",
    image_token_count=FIXED,
    pad_to_square=True,
)

QWEN2_5_VL = VisionFamily(
    model_type="qwen2_5_vl",
    model_class="Qwen2_5_VLForConditionalGeneration",
    processor_class="Qwen2_5_VLProcessor",
    language_model="language_model",
    vision_tower="visual",
    projector="visual.merger",
    image_token_count=PER_IMAGE,
    pad_to_square=False,
)

VISION_FAMILIES = {family.model_type: family for family in (LLAVA, QWEN2_5_VL)}


def vision_family(model_type: str | None) -> VisionFamily | None:
    """The family of a config.json model_type; None for a text-only model."""
    return VISION_FAMILIES.get(model_type or "")


def processor_family(processor) -> VisionFamily | None:
    """The family whose processor class `processor` is (by class name); None for a tokenizer or a
    processor of no known family."""
    name = type(processor).__name__
    return next((family for family in VISION_FAMILIES.values() if family.processor_class == name), None)


def image_tokens(processor, width: int, height: int) -> int:
    """How many image tokens the Qwen-style `processor` turns an image of width x height pixels
    into: its image processor's own resize rule (patches of the resized image), divided by the
    merge of merge_size x merge_size patches into one token, as the processor expands
    `<|image_pad|>` (image_grid_thw.prod() // merge_size**2)."""
    image_processor = processor.image_processor
    patches = image_processor.get_number_of_image_patches(int(height), int(width), {})
    return int(patches) // int(image_processor.merge_size) ** 2


def image_pixel_bounds(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) a Qwen-style image processor resizes images between."""
    size = processor.image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])


def set_image_pixel_bounds(processor, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Bound the pixels a Qwen-style processor resizes images to (None: keep the processor's own).
    Saved with the processor, so the trained checkpoint sees images as training did."""
    current_min, current_max = image_pixel_bounds(processor)
    low = current_min if min_pixels is None else int(min_pixels)
    high = current_max if max_pixels is None else int(max_pixels)
    if not 0 < low <= high:
        raise ValueError(f"image pixel bounds need 0 < min_pixels <= max_pixels, got {low} and {high}")
    image_processor = processor.image_processor
    size = dict(image_processor.size)
    size.update({"shortest_edge": low, "longest_edge": high})
    image_processor.size = type(image_processor.size)(**size) if not isinstance(image_processor.size, dict) else size
    if image_pixel_bounds(processor) != (low, high):
        raise RuntimeError(f"{type(image_processor).__name__} did not take the pixel bounds ({low}, {high})")
