"""The original's occlusion loop and the per-step helpers the tests check the vectorised
`groundflow.vision.occlusion` against."""

from __future__ import annotations

import random

import numpy as np
import torch

from groundflow.vision.occlusion import (
    Occlusion,
    _box_hits,  # the vectorised walk of one box, whose centres `patch_centres` exposes
    draw_skips,
    grid_shape,
    paint_squares_into,
    patch_geometry,
)


def placement_indices(skips: np.ndarray, n_grid: int) -> np.ndarray:
    """Row-major grid indices where the counter fires: the k-th placement follows skips[k] points."""
    idx = np.cumsum(skips + 1) - 1
    return idx[idx < n_grid]


def patch_centres(
    mask: np.ndarray, box, rng: np.random.Generator | random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (ys, xs) of the patches one box places inside `mask`; draws what the reference draws."""
    hits, nx, g, _ = _box_hits(np.asarray(mask, dtype=bool), box, rng, consume_all=True)
    grid_y, grid_x = np.divmod(hits, nx)
    return grid_y * g, grid_x * g


def paint_squares(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, p: int) -> np.ndarray:
    """Union of squares [y - p//2, y + p//2] x [x - p//2, x + p//2] clipped to `shape`, as bool."""
    return paint_squares_into(np.zeros(shape, dtype=bool), ys, xs, p)


def occlusion_mask_reference(
    masks: np.ndarray, boxes, rng_py: random.Random | np.random.Generator
) -> Occlusion:
    """The original's loop (2-2_segment.py's `mask_entity`), as written, for tests and benchmarks.

    `masks` is (n_boxes, H, W), SAM's chosen mask per box: like the original, box `cnt` tests
    `temp_mask[cnt, i, j]`, its own mask, never the union of the entity's masks. Like the original
    it walks every grid point in Python and indexes / paints torch tensors (its masks came out of
    SAM as a tensor), so its cost is the original's. Only the skips differ in origin: they come
    from `draw_skips`, which makes the result equal to `occlusion_mask`'s.
    """
    temp_mask = torch.as_tensor(np.asarray(masks, dtype=bool))
    if temp_mask.ndim != 3 or temp_mask.shape[0] != len(boxes):
        raise ValueError(f"one mask per box: {len(boxes)} boxes, masks of shape {tuple(temp_mask.shape)}")
    h, w = temp_mask.shape[-2:]
    painted = torch.zeros((h, w), dtype=torch.bool)
    n_patches = 0
    for cnt in range(temp_mask.shape[0]):
        patch_size, gap = patch_geometry(boxes[cnt])
        ny, nx = grid_shape((h, w), gap)
        skips = iter(draw_skips(rng_py, ny * nx + 1, patch_size).tolist())
        cur_step = 0
        next_step = next(skips)
        for i in range(0, h, gap):
            for j in range(0, w, gap):
                if cur_step == next_step:
                    cur_step = 0
                    next_step = next(skips)
                    if temp_mask[cnt, i, j]:
                        n_patches += 1
                        left_i = max(0, i - (patch_size // 2))
                        right_i = min(h - 1, i + (patch_size // 2))
                        left_j = max(0, j - (patch_size // 2))
                        right_j = min(w - 1, j + (patch_size // 2))
                        painted[left_i : right_i + 1, left_j : right_j + 1] = True
                else:
                    cur_step += 1
    return Occlusion(painted.numpy(), n_patches)
