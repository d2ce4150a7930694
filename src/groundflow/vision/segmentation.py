"""Segmentation with Segment Anything (CVC step 2-2, first half).

Per image the (expensive) image embedding is computed once, then every box of every entity of that
image is decoded in one batched `predict_torch` call. Each box keeps its own mask, because
occlusion walks each box's mask with that box's patch size (as the original does); an entity's
masks go into one 1-bit PNG, stacked top to bottom in the order of its `boxes` (height n x H), so
that one file per entity is written atomically and stays viewable. `mask_area` is the area of
their union.

Differences from the original, on purpose: the best-scoring of SAM's three candidates is taken
(`mask_choice="best"`; "first" reproduces the original, which took candidate 0), inference runs
under `torch.inference_mode`, and one embedding serves all entities of an image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from groundflow.io import StageResult, atomic_path, rejects_frame
from groundflow.models.spec import resolve_dtype
from groundflow.vision.image_io import ImageError, image_stem, load_rgb

STAGE = "segmentation"
MASK_CHOICES = ("best", "first")
# predict_torch upsamples all candidates to full resolution as float32 before thresholding; this
# caps that tensor so a 4000x3000 image with many boxes cannot exhaust memory.
UPSAMPLE_BUDGET_BYTES = 2 << 30


def output_file_name(image: str, label: str, suffix: str) -> str:
    """f"{image stem}-{label}{suffix}", with anything that would leave the folder replaced."""
    name = f"{image_stem(image)}-{label}{suffix}"
    for bad in ("/", "\\", os.sep, "\x00"):
        name = name.replace(bad, "_")
    if name.startswith("."):
        name = "_" + name[1:]
    return name


def relative_posix(path: str | Path, relative_to: str | Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(relative_to).resolve())).as_posix()


def save_box_masks(path: str | Path, masks: np.ndarray) -> None:
    """Per-box bool masks (n, H, W) as one 1-bit PNG of n x H rows (box k in rows k*H..), atomically."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or len(masks) == 0:
        raise ValueError(f"box masks must be (n >= 1, H, W), not shape {masks.shape}")
    n, height, width = masks.shape
    with atomic_path(path) as tmp:
        Image.fromarray(masks.reshape(n * height, width)).save(tmp, format="PNG", optimize=True)


def load_box_masks(path: str | Path, n_boxes: int) -> np.ndarray:
    """The (n_boxes, H, W) bool masks of a `save_box_masks` file (1-bit or 8-bit PNG); raises
    ImageError when the file is unusable or its height is not a multiple of n_boxes."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"missing mask file {path}")
    try:
        with Image.open(path) as im:
            im.load()
            stacked = np.asarray(im.convert("L")) >= 128
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"unreadable mask {path}: {e}") from None
    if n_boxes < 1 or stacked.shape[0] % n_boxes:
        raise ImageError(f"mask {path} has {stacked.shape[0]} rows, not a stack of {n_boxes} box masks")
    return stacked.reshape(n_boxes, stacked.shape[0] // n_boxes, stacked.shape[1])


def choose_candidates(masks: torch.Tensor, iou_predictions: torch.Tensor, choice: str) -> torch.Tensor:
    """(B, C, H, W) candidates -> (B, H, W): the highest predicted IoU ("best") or candidate 0."""
    if choice == "first":
        return masks[:, 0]
    if choice == "best":
        best = iou_predictions.float().argmax(dim=1)
        return masks[torch.arange(masks.shape[0], device=masks.device), best]
    raise ValueError(f"mask_choice must be one of {MASK_CHOICES}, not {choice!r}")


def boxes_array(value) -> np.ndarray:
    """A (n, 4) float array from a list of boxes (Python lists or Parquet's arrays of arrays)."""
    if value is None:
        return np.zeros((0, 4))
    rows = [np.asarray(b, dtype=np.float64).reshape(-1) for b in value]
    return np.stack(rows).reshape(-1, 4) if rows else np.zeros((0, 4))


def _boxes_per_call(batch_boxes: int, height: int, width: int, n_candidates: int = 3) -> int:
    per_box = n_candidates * height * width * 4
    return max(1, min(batch_boxes, UPSAMPLE_BUDGET_BYTES // per_box))


def predict_box_masks(
    predictor: SamPredictor,
    entity_boxes: list[np.ndarray],
    *,
    mask_choice: str,
    batch_boxes: int,
    clip_to_box: bool = True,
) -> list[np.ndarray]:
    """Per entity, its boxes' masks (n_boxes, H, W) bool, on the image set in `predictor`. All
    boxes of all entities go through `predict_torch` together, `batch_boxes` (or fewer for very
    large images) at a time. With `clip_to_box`, each box's mask is cut to its box: a box prompt
    asks for the object inside it, and what leaks out is SAM's error."""
    h, w = predictor.original_size
    pixel_boxes = torch.as_tensor(np.concatenate(entity_boxes), dtype=torch.float32, device=predictor.device)
    boxes = predictor.transform.apply_boxes_torch(pixel_boxes, predictor.original_size)
    out = torch.zeros((len(boxes), h, w), dtype=torch.bool, device=predictor.device)
    step = _boxes_per_call(batch_boxes, h, w)
    for start in range(0, len(boxes), step):
        masks, iou, _ = predictor.predict_torch(
            None, None, boxes=boxes[start : start + step], multimask_output=True
        )
        chosen = choose_candidates(masks, iou, mask_choice)
        if clip_to_box:
            chosen &= box_masks(pixel_boxes[start : start + step], h, w)
        out[start : start + step] = chosen
    ends = np.cumsum([len(b) for b in entity_boxes])
    return np.split(out.cpu().numpy(), ends[:-1])


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, H, W) bool: pixel (y, x) lies in [x0, x1) x [y0, y1) of each box."""
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)[None, :, None] + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)[None, None, :] + 0.5
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def mask_groups(instances_df: pd.DataFrame) -> list[int]:
    """Per row, the group it must be segmented with when a shard runs in chunks.

    Rows of one image share its embedding, and rows whose mask files would have one name
    (`output_file_name`: "x-y" + "z" and "x" + "y-z" collide, as do equal stems in two folders)
    must meet in one `segment` call, which keeps the first and rejects the others; rows linked
    by either, transitively, form a group, numbered by the position of its first row.
    """
    parent = list(range(len(instances_df)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    images = [str(i) for i in instances_df["image"]]
    labels = [str(label) for label in instances_df["label"]]
    for pos, (image, label) in enumerate(zip(images, labels)):
        for key in (("image", image), ("name", output_file_name(image, label, ".png"))):
            if key in first:
                a, b = root(first[key]), root(pos)
                parent[max(a, b)] = min(a, b)  # the smaller position stays the root
            else:
                first[key] = pos
    return [root(pos) for pos in range(len(parent))]


def segment(
    instances_df: pd.DataFrame,
    image_root: str | Path,
    sam: Sam,
    *,
    mask_dir: str | Path,
    relative_to: str | Path,
    mask_choice: str = "best",
    min_mask_area: int,
    batch_boxes: int = 64,
    clip_to_box: bool = True,
    compute_dtype: torch.dtype | None = None,
    write_dir: str | Path | None = None,
) -> StageResult:
    """One mask per box of each (image, entity) row, all in one file per row (`save_box_masks`);
    adds mask_path and mask_area (pixels of the union of the row's box masks).

    `compute_dtype` None follows the device policy (bf16 autocast on GPU, fp32 on CPU); pass
    `spec.torch_dtype()` to follow a model spec. Rejected: unreadable image, no boxes, a mask
    smaller than `min_mask_area` pixels, or a mask whose file name an earlier row already took.
    `mask_path` names the file in `mask_dir`; with `write_dir` the file is written there instead
    (a chunk's checkpoint, published into `mask_dir` when the shard is done).
    """
    if mask_choice not in MASK_CHOICES:
        raise ValueError(f"mask_choice must be one of {MASK_CHOICES}, not {mask_choice!r}")
    image_root, mask_dir = Path(image_root), Path(mask_dir)
    write_dir = mask_dir if write_dir is None else Path(write_dir)
    df = instances_df.reset_index(drop=True)
    device = sam.device
    dtype = compute_dtype or resolve_dtype("auto", device)
    autocast = torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)
    predictor = SamPredictor(sam)
    rejects: list[tuple[str, str]] = []
    results: dict[int, tuple[str, int]] = {}
    written: dict[str, str] = {}
    with torch.inference_mode(), autocast:
        for image, rows in df.groupby("image", sort=False):
            ids = [str(i) for i in rows["id"]]
            try:
                pixels = np.asarray(load_rgb(image_root / image))
            except ImageError as e:
                rejects.extend((rid, f"image of '{rid}': {e}") for rid in ids)
                continue
            entity_boxes = [boxes_array(b) for b in rows["boxes"]]
            for rid, label, boxes in zip(ids, rows["label"], entity_boxes):
                if len(boxes) == 0:
                    rejects.append((rid, f"no boxes for '{label}' in {image}"))
            todo = [k for k, b in enumerate(entity_boxes) if len(b)]
            if not todo:
                continue
            predictor.set_image(pixels, image_format="RGB")
            masks = predict_box_masks(
                predictor, [entity_boxes[k] for k in todo], mask_choice=mask_choice, batch_boxes=batch_boxes,
                clip_to_box=clip_to_box,
            )
            predictor.reset_image()
            for k, box_masks_of_row in zip(todo, masks):
                pos, rid, label = rows.index[k], ids[k], rows["label"].iloc[k]
                area = int(np.logical_or.reduce(box_masks_of_row, axis=0).sum())
                if area < min_mask_area:
                    rejects.append(
                        (rid, f"mask area {area} < min {min_mask_area} for '{label}' in {image}")
                    )
                    continue
                name = output_file_name(image, label, ".png")
                if name in written:
                    rejects.append(
                        (rid, f"mask file {name} of '{rid}' is already written for '{written[name]}'")
                    )
                    continue
                save_box_masks(write_dir / name, box_masks_of_row)
                written[name] = rid
                results[pos] = (relative_posix(mask_dir / name, relative_to), area)
    kept = df.loc[[i for i in df.index if i in results]].copy()
    kept["mask_path"] = pd.Series([results[i][0] for i in kept.index], index=kept.index, dtype=object)
    kept["mask_area"] = pd.Series([results[i][1] for i in kept.index], index=kept.index, dtype="int64")
    return StageResult(kept=kept.reset_index(drop=True), rejects=rejects_frame(STAGE, rejects))
