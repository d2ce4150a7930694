"""Occlusion: grey square patches over an object's mask (CVC step 2-2).

Geometry of the original, per box (x0, y0, x1, y1):
- patch side p = max(int(min(|x1 - x0|, |y1 - y0|) // 3), 4), stride g = int(sqrt(p));
- walk the grid (y outer, x inner, both stepping by g) over the WHOLE image; a counter skips a
  random number of grid points in [0, p] between placements (the first placement is itself after a
  random skip);
- at a placement point inside the mask, paint the square [y - p//2, y + p//2] x [x - p//2, x + p//2]
  (inclusive, clipped to the image: side p for odd p, p + 1 for even p, as the original).
The painted area is the union over all boxes of the entity. Squares are full squares, so they may
spill past the object (as in the original); `occluded_fraction` counts mask pixels only.

`occlusion_mask` is the vectorised version; `occlusion_mask_reference` is the original's Python
loop, kept for tests and benchmarks. Both take their skips from `draw_skips`, so with the same RNG
state they paint identical masks.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image

from groundflow.io import StageResult, atomic_path, rejects_frame
from groundflow.vision.image_io import ImageError, load_rgb
from groundflow.vision.segmentation import boxes_array, load_mask, output_file_name, relative_posix

STAGE = "occlusion"
IMAGENET_MEAN_RGB = (123, 116, 103)
JPEG_QUALITY = 95  # what the original's cv2.imwrite used (OpenCV's default)


class Occlusion(NamedTuple):
    painted: np.ndarray  # bool (H, W): pixels to fill
    n_patches: int  # placements that landed inside the mask, over all boxes


# --------------------------------------------------------------------------- pure geometry


def patch_geometry(box) -> tuple[int, int]:
    """(patch side p, grid stride g) for a box [x0, y0, x1, y1]."""
    x0, y0, x1, y1 = (float(v) for v in box)
    p = max(int(min(abs(x1 - x0), abs(y1 - y0)) // 3), 4)
    return p, int(math.sqrt(p))


def grid_shape(shape: tuple[int, int], stride: int) -> tuple[int, int]:
    """Number of grid rows and columns of `range(0, H, g)` x `range(0, W, g)`."""
    h, w = shape
    return -(-h // stride), -(-w // stride)


def draw_skips(rng: np.random.Generator | random.Random, n: int, p: int) -> np.ndarray:
    """n skip counts, each uniform in [0, p] (inclusive, like random.randint(0, p))."""
    if isinstance(rng, random.Random):
        return np.array([rng.randint(0, p) for _ in range(n)], dtype=np.int64)
    return rng.integers(0, p + 1, size=n, dtype=np.int64)


def placement_indices(skips: np.ndarray, n_grid: int) -> np.ndarray:
    """Row-major grid indices where the counter fires: the k-th placement follows skips[k] points."""
    idx = np.cumsum(skips + 1) - 1
    return idx[idx < n_grid]


def patch_centres(
    mask: np.ndarray, box, rng: np.random.Generator | random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (ys, xs) of the patches one box places inside `mask`."""
    p, g = patch_geometry(box)
    ny, nx = grid_shape(mask.shape, g)
    n_grid = ny * nx
    # At most one placement per grid point, so n_grid + 1 draws (one initial, one per placement)
    # always suffice; drawing them up front keeps the stream identical to the reference's.
    idx = placement_indices(draw_skips(rng, n_grid + 1, p), n_grid)
    ys, xs = (idx // nx) * g, (idx % nx) * g
    inside = mask[ys, xs]
    return ys[inside], xs[inside]


def paint_squares(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, p: int) -> np.ndarray:
    """Union of squares [y - p//2, y + p//2] x [x - p//2, x + p//2] clipped to `shape`, as bool.

    Separable, without per-pixel loops: first the columns each distinct centre row covers (a 1-D
    difference array per row), then each pixel row ORs the rows of centres within p//2 of it,
    as a difference of prefix sums over those centre rows.
    """
    height, width = shape
    out = np.zeros(shape, dtype=bool)
    if len(ys) == 0:
        return out
    half = p // 2
    ys, xs = np.asarray(ys, dtype=np.int64), np.asarray(xs, dtype=np.int64)
    centre_rows, row_of = np.unique(ys, return_inverse=True)
    n_rows, stride = len(centre_rows), width + 1
    starts = row_of * stride + np.clip(xs - half, 0, width)
    stops = row_of * stride + np.clip(xs + half + 1, 0, width)
    diff = np.bincount(starts, minlength=n_rows * stride) - np.bincount(stops, minlength=n_rows * stride)
    covered_cols = np.cumsum(diff.reshape(n_rows, stride)[:, :width], axis=1) > 0
    # prefix[k] = how many of the first k centre rows cover each column
    prefix = np.zeros((n_rows + 1, width), dtype=np.int32)
    np.cumsum(covered_cols, axis=0, out=prefix[1:])
    top = max(int(centre_rows[0]) - half, 0)
    bottom = min(int(centre_rows[-1]) + half + 1, height)
    pixel_rows = np.arange(top, bottom)
    first = np.searchsorted(centre_rows, pixel_rows - half, side="left")
    last = np.searchsorted(centre_rows, pixel_rows + half, side="right")
    out[top:bottom] = prefix[last] > prefix[first]
    return out


def occlusion_mask(
    mask: np.ndarray, boxes, rng: np.random.Generator | random.Random
) -> Occlusion:
    """Pixels to paint for one entity: union over its boxes (vectorised)."""
    mask = np.asarray(mask, dtype=bool)
    painted = np.zeros(mask.shape, dtype=bool)
    n_patches = 0
    for box in boxes:
        ys, xs = patch_centres(mask, box, rng)
        painted |= paint_squares(mask.shape, ys, xs, patch_geometry(box)[0])
        n_patches += len(ys)
    return Occlusion(painted, n_patches)


def occlusion_mask_reference(
    mask: np.ndarray, boxes, rng_py: random.Random | np.random.Generator
) -> Occlusion:
    """The original's loop, as written, for tests and benchmarks.

    Like the original it walks every grid point in Python and indexes / paints torch tensors (its
    mask came out of SAM as a tensor), so its cost is the original's. Only the skips differ in
    origin: they come from `draw_skips`, which makes the result equal to `occlusion_mask`'s.
    """
    temp_mask = torch.as_tensor(np.asarray(mask, dtype=bool))
    h, w = temp_mask.shape
    painted = torch.zeros((h, w), dtype=torch.bool)
    n_patches = 0
    for box in boxes:
        patch_size, gap = patch_geometry(box)
        ny, nx = grid_shape((h, w), gap)
        skips = iter(draw_skips(rng_py, ny * nx + 1, patch_size).tolist())
        cur_step = 0
        next_step = next(skips)
        for i in range(0, h, gap):
            for j in range(0, w, gap):
                if cur_step == next_step:
                    cur_step = 0
                    next_step = next(skips)
                    if temp_mask[i, j]:
                        n_patches += 1
                        left_i = max(0, i - (patch_size // 2))
                        right_i = min(h - 1, i + (patch_size // 2))
                        left_j = max(0, j - (patch_size // 2))
                        right_j = min(w - 1, j + (patch_size // 2))
                        painted[left_i : right_i + 1, left_j : right_j + 1] = True
                else:
                    cur_step += 1
    return Occlusion(painted.numpy(), n_patches)


def record_rng(seed: int, record_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, id): not on sharding, order, or PYTHONHASHSEED."""
    digest = hashlib.sha256(f"{int(seed)}\x00{record_id}".encode("utf-8")).digest()
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int.from_bytes(digest[:16], "little")])
    )


# --------------------------------------------------------------------------- stage


def occlude(
    instances_df: pd.DataFrame,
    image_root: str | Path,
    *,
    mask_root: str | Path,
    out_dir: str | Path,
    relative_to: str | Path,
    seed: int,
    min_coverage: float,
    fill: tuple[int, int, int] = IMAGENET_MEAN_RGB,
) -> StageResult:
    """Paint patches over each (image, entity)'s mask; one JPEG per row in `out_dir`.

    Adds occluded_image (relative to `relative_to`), n_patches, occluded_fraction (share of mask
    pixels painted). Rejected: unreadable image or mask, mask/image size mismatch, empty mask, no
    patch inside the mask, or occluded_fraction < min_coverage.
    """
    image_root, mask_root, out_dir = Path(image_root), Path(mask_root), Path(out_dir)
    df = instances_df.reset_index(drop=True)
    fill_rgb = np.asarray(fill, dtype=np.uint8)
    rejects: list[tuple[str, str]] = []
    results: dict[int, tuple[str, int, float]] = {}
    written: dict[str, str] = {}
    for image, rows in df.groupby("image", sort=False):
        try:
            pixels = np.asarray(load_rgb(image_root / image))
        except ImageError as e:
            rejects.extend((str(r.id), f"image of '{r.id}': {e}") for r in rows.itertuples())
            continue
        for pos, row in zip(rows.index, rows.itertuples()):
            rid = str(row.id)
            name = output_file_name(image, row.label, ".jpg")
            if name in written:
                rejects.append(
                    (rid, f"output {name} of '{rid}' is already written for '{written[name]}'")
                )
                continue
            try:
                mask = load_mask(mask_root / row.mask_path)
            except ImageError as e:
                rejects.append((rid, f"mask of '{rid}': {e}"))
                continue
            if mask.shape != pixels.shape[:2]:
                rejects.append(
                    (rid, f"mask of '{rid}' is {mask.shape[1]}x{mask.shape[0]}, "
                          f"image {pixels.shape[1]}x{pixels.shape[0]}")
                )
                continue
            mask_area = int(mask.sum())
            if mask_area == 0:
                rejects.append((rid, f"empty mask for '{rid}'"))
                continue
            boxes = boxes_array(row.boxes)
            if len(boxes) == 0:
                rejects.append((rid, f"no boxes for '{rid}'"))
                continue
            occ = occlusion_mask(mask, boxes, record_rng(seed, rid))
            fraction = float((occ.painted & mask).sum()) / mask_area
            if occ.n_patches == 0:
                rejects.append((rid, f"no patch landed inside the {mask_area}-pixel mask of '{rid}'"))
                continue
            if fraction < min_coverage:
                rejects.append(
                    (rid, f"occluded fraction {fraction:.3f} < min {min_coverage} for '{rid}' "
                          f"({occ.n_patches} patches over {mask_area} mask pixels)")
                )
                continue
            out = pixels.copy()
            out[occ.painted] = fill_rgb
            target = out_dir / name
            with atomic_path(target) as tmp:
                Image.fromarray(out).save(tmp, format="JPEG", quality=JPEG_QUALITY)
            written[name] = rid
            results[pos] = (relative_posix(target, relative_to), occ.n_patches, fraction)
    kept = df.loc[[i for i in df.index if i in results]].copy()
    kept["occluded_image"] = pd.Series(
        [results[i][0] for i in kept.index], index=kept.index, dtype=object
    )
    kept["n_patches"] = pd.Series([results[i][1] for i in kept.index], index=kept.index, dtype="int64")
    kept["occluded_fraction"] = pd.Series(
        [results[i][2] for i in kept.index], index=kept.index, dtype="float64"
    )
    return StageResult(kept=kept.reset_index(drop=True), rejects=rejects_frame(STAGE, rejects))


__all__ = [
    "IMAGENET_MEAN_RGB",
    "Occlusion",
    "boxes_array",
    "draw_skips",
    "occlude",
    "occlusion_mask",
    "occlusion_mask_reference",
    "paint_squares",
    "patch_centres",
    "patch_geometry",
    "placement_indices",
    "record_rng",
]
