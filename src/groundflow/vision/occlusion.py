"""Occlusion: grey square patches over an object's mask (CVC step 2-2).

Geometry of the original, per box (x0, y0, x1, y1) and that box's own SAM mask:
- patch side p = max(int(min(|x1 - x0|, |y1 - y0|) // 3), 4), stride g = int(sqrt(p));
- walk the grid (y outer, x inner, both stepping by g) over the WHOLE image; a counter skips a
  random number of grid points in [0, p] between placements (the first placement is itself after a
  random skip);
- at a placement point inside THIS box's mask, paint the square [y - p//2, y + p//2] x [x - p//2, x + p//2]
  (inclusive, clipped to the image: side p for odd p, p + 1 for even p, as the original).
The painted area is the union over all boxes of the entity. A box never places patches on another
box's mask, even where the masks' union would have allowed it. Squares are full squares, so they
may spill past the object (as in the original); `occluded_fraction` counts pixels of the union of
the masks only.

`occlusion_mask` is the vectorised version; the original's Python loop is `occlusion_mask_reference`
in tests/reference/occlusion.py, which tests and benchmarks compare against. Both take their skips
from `draw_skips`, so with the same RNG state they paint identical masks. The vectorised version
does only the work that can change the result: it turns skips into placements with a cumulative
sum, stops drawing skips after the last
grid row holding mask pixels (the last box's remaining draws are never made; earlier boxes still
draw all theirs so the next box's stream is the reference's), tests the mask only at placements,
and paints squares by slicing (or prefix sums, for many) on the touched crop.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from groundflow.io import StageResult, atomic_path, rejects_frame
from groundflow.vision.image_io import ImageError, load_rgb
from groundflow.vision.segmentation import boxes_array, load_box_masks, output_file_name, relative_posix

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
    """n skip counts, each uniform in [0, p] (inclusive, like random.randint(0, p)).

    Drawing n values in several calls gives the same values as one call (for numpy Generators the
    bit generator keeps its spare 32 bits in its state), which `_placements_between` relies on.
    """
    if isinstance(rng, random.Random):
        return np.array([rng.randint(0, p) for _ in range(n)], dtype=np.int64)
    return rng.integers(0, p + 1, size=n, dtype=np.int64)


def _draw_steps(rng: np.random.Generator | random.Random, n: int, p: int) -> np.ndarray:
    """`draw_skips(rng, n, p) + 1` (grid points from one placement to the next), same stream."""
    if isinstance(rng, random.Random):
        return draw_skips(rng, n, p) + 1
    # numpy draws integers(low, high) as low + the same bounded draw: these are the reference's
    # integers(0, p + 1) values plus one, without a pass to add it
    return rng.integers(1, p + 2, size=n, dtype=np.int64)


def _placements_between(
    rng: np.random.Generator | random.Random, p: int, first: int, last: int, n_draws: int
) -> tuple[np.ndarray, int]:
    """(walk-order grid indices of the placements in [first, last], skips drawn).

    The walk takes n_draws skips in all; only those up to the first placement past `last` are
    drawn, in chunks sized from the mean step p/2 + 1 (chunks give the same stream as one draw,
    see `draw_skips`).
    """
    chunks: list[np.ndarray] = []
    drawn, end = 0, -1  # end: index of the latest placement so far
    while end <= last and drawn < n_draws:
        size = min(n_draws - drawn, int((last - end) / (p / 2 + 1) * 1.1) + 8)
        idx = _draw_steps(rng, size, p)
        idx[0] += end
        idx.cumsum(out=idx)
        chunks.append(idx)
        drawn += size
        end = int(idx[-1])
    idx = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    lo, hi = idx.searchsorted((first, last + 1))
    return idx[lo:hi], drawn


def mask_bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive (top, bottom, left, right) of a 2-D bool mask's pixels, or None when it is empty.

    A bool argmax stops at the first True, which gives the top row without reading the rows
    above twice; byte-wise OR reductions (faster than any()) give the rows and columns below it.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    height, width = mask.shape
    if mask.size == 0:
        return None
    flat = mask.reshape(-1)
    first = int(flat.argmax())
    if not flat[first]:
        return None
    top = first // width
    as_bytes = mask.view(np.uint8)
    bottom = top + int(np.flatnonzero(np.bitwise_or.reduce(as_bytes[top:], axis=1))[-1])
    cols = np.flatnonzero(np.bitwise_or.reduce(as_bytes[top : bottom + 1], axis=0))
    return top, bottom, int(cols[0]), int(cols[-1])


def painted_window(painted: np.ndarray) -> tuple[slice, slice]:
    """(rows, columns) slices of the painted pixels' bounding box; empty slices if none."""
    bounds = mask_bounds(painted)
    if bounds is None:
        return slice(0, 0), slice(0, 0)
    top, bottom, left, right = bounds
    return slice(top, bottom + 1), slice(left, right + 1)


def _box_hits(
    mask: np.ndarray, box, rng: np.random.Generator | random.Random, *, consume_all: bool
) -> tuple[np.ndarray, int, int, int]:
    """(walk-order indices of the grid points where patches land, grid columns, stride, patch side).

    The walk over the whole grid takes n_grid + 1 skips (at most one placement per grid point,
    plus the initial skip), and the reference draws them all. Only placements on grid rows that
    hold mask pixels can land, so only the skips up to the end of the last such row decide the
    result; with consume_all the rest are still drawn (and dropped) so that the generator ends
    where the reference's does, as a later box of the same entity needs.
    """
    p, g = patch_geometry(box)
    ny, nx = grid_shape(mask.shape, g)
    n_draws = ny * nx + 1
    # grid rows with a mask pixel in any column: a superset of the rows with one on a grid point
    rows = np.logical_or.reduce(mask[::g], axis=1).nonzero()[0]
    if len(rows):
        first, last = int(rows[0]) * nx, int(rows[-1]) * nx + nx - 1
        idx, drawn = _placements_between(rng, p, first, last, n_draws)
        hits = idx[mask[::g, ::g][np.divmod(idx, nx)]]
    else:
        hits, drawn = np.zeros(0, dtype=np.int64), 0
    if consume_all and drawn < n_draws:
        draw_skips(rng, n_draws - drawn, p)
    return hits, nx, g, p


# Up to this many squares, slicing them one by one beats the vectorised painter's fixed cost.
SLICE_PAINT_MAX = 96


def _slice_squares(out: np.ndarray, centres, half: int) -> None:
    for y, x in centres:
        out[max(y - half, 0) : y + half + 1, max(x - half, 0) : x + half + 1] = True


def paint_squares_into(out: np.ndarray, ys: np.ndarray, xs: np.ndarray, p: int) -> np.ndarray:
    """OR squares [y - p//2, y + p//2] x [x - p//2, x + p//2] (clipped) into bool `out`."""
    n = len(ys)
    if n == 0:
        return out
    half = p // 2
    if n <= SLICE_PAINT_MAX:
        _slice_squares(out, zip(np.asarray(ys).tolist(), np.asarray(xs).tolist()), half)
        return out
    ys, xs = np.asarray(ys, dtype=np.int64), np.asarray(xs, dtype=np.int64)
    height, width = out.shape
    x_lo, x_hi = max(int(xs.min()) - half, 0), min(int(xs.max()) + half + 1, width)
    y_lo, y_hi = max(int(ys.min()) - half, 0), min(int(ys.max()) + half + 1, height)
    crop = out[y_lo:y_hi, x_lo:x_hi]
    crop |= _paint_crop((y_hi - y_lo, x_hi - x_lo), ys - y_lo, xs - x_lo, half)
    return out


def _paint_crop(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, half: int) -> np.ndarray:
    """Union of squares of half-side `half` in `shape`, without per-square loops.

    Separable: first the columns each distinct centre row covers (a 1-D difference array per row),
    then each pixel row ORs the rows of centres within `half` of it, as a difference of prefix
    sums over those centre rows.
    """
    height, width = shape
    out = np.zeros(shape, dtype=bool)
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


def _paint_hits(out: np.ndarray, hits: np.ndarray, nx: int, g: int, p: int) -> None:
    """`paint_squares_into` for grid indices (row-major, nx columns, stride g)."""
    if len(hits) > SLICE_PAINT_MAX:
        grid_y, grid_x = np.divmod(hits, nx)
        paint_squares_into(out, grid_y * g, grid_x * g, p)
        return
    # few squares: their centres in plain Python, no arrays built for them
    _slice_squares(out, (((i // nx) * g, (i % nx) * g) for i in hits.tolist()), p // 2)


def occlusion_mask(
    masks: np.ndarray, boxes, rng: np.random.Generator | random.Random
) -> Occlusion:
    """Pixels to paint for one entity (vectorised): box k walks masks[k], its own mask (n, H, W),
    with its own patch size; the result is the union over the boxes.

    Paints what `occlusion_mask_reference` paints with the same generator. The last box draws
    only the skips that can matter (up to its mask's last grid row), so afterwards `rng` may be
    behind where the reference leaves it: give each entity its own generator (`record_rng`).
    """
    masks = check_box_masks(masks, boxes)
    painted = np.zeros(masks.shape[1:], dtype=bool)
    n_patches = 0
    for k, box in enumerate(boxes):
        hits, nx, g, p = _box_hits(masks[k], box, rng, consume_all=k < len(boxes) - 1)
        _paint_hits(painted, hits, nx, g, p)
        n_patches += len(hits)
    return Occlusion(painted, n_patches)


def check_box_masks(masks: np.ndarray, boxes) -> np.ndarray:
    """`masks` as bool (n, H, W) with one mask per box; a single (H, W) mask is refused, since
    walking one mask for every box is the union behaviour the original does not have."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or len(masks) != len(boxes):
        raise ValueError(f"need one (H, W) mask per box: {len(boxes)} boxes, masks of shape {masks.shape}")
    return masks


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
    """Paint patches over each (image, entity)'s box masks; one JPEG per row in `out_dir`.

    Adds occluded_image (relative to `relative_to`), n_patches, occluded_fraction (share of the
    pixels of the masks' union painted). Rejected: unreadable image or mask, mask/image size mismatch, empty mask, no
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
            rejects.extend((str(rid), f"image of '{rid}': {e}") for rid in rows["id"])
            continue
        # plain column zips: itertuples() would build a namedtuple class for every image
        columns = (rows.index, rows["id"], rows["label"], rows["mask_path"], rows["boxes"])
        for pos, rid, label, mask_path, boxes_value in zip(*columns):
            rid = str(rid)
            name = output_file_name(image, label, ".jpg")
            if name in written:
                rejects.append(
                    (rid, f"output {name} of '{rid}' is already written for '{written[name]}'")
                )
                continue
            boxes = boxes_array(boxes_value)
            if len(boxes) == 0:
                rejects.append((rid, f"no boxes for '{rid}'"))
                continue
            try:
                box_masks = load_box_masks(mask_root / mask_path, len(boxes))
            except ImageError as e:
                rejects.append((rid, f"mask of '{rid}': {e}"))
                continue
            if box_masks.shape[1:] != pixels.shape[:2]:
                rejects.append(
                    (rid, f"mask of '{rid}' is {box_masks.shape[2]}x{box_masks.shape[1]}, "
                          f"image {pixels.shape[1]}x{pixels.shape[0]}")
                )
                continue
            mask = np.logical_or.reduce(box_masks, axis=0)
            mask_area = int(np.count_nonzero(mask))
            if mask_area == 0:
                rejects.append((rid, f"empty mask for '{rid}'"))
                continue
            occ = occlusion_mask(box_masks, boxes, record_rng(seed, rid))
            if occ.n_patches == 0:
                rejects.append((rid, f"no patch landed inside the {mask_area}-pixel mask of '{rid}'"))
                continue
            # count and fill within the painted pixels' bounding box: a whole-image boolean
            # index costs more than the patch geometry itself
            window = painted_window(occ.painted)
            painted = occ.painted[window]
            fraction = np.count_nonzero(painted & mask[window]) / mask_area
            if fraction < min_coverage:
                rejects.append(
                    (rid, f"occluded fraction {fraction:.3f} < min {min_coverage} for '{rid}' "
                          f"({occ.n_patches} patches over {mask_area} mask pixels)")
                )
                continue
            out = pixels.copy()
            out[window][painted] = fill_rgb
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
    "check_box_masks",
    "draw_skips",
    "mask_bounds",
    "occlude",
    "occlusion_mask",
    "paint_squares_into",
    "painted_window",
    "patch_geometry",
    "record_rng",
]
