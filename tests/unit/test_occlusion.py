"""Occlusion geometry: exact masks on small arrays, and vectorised == the original's loop."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from groundflow.vision.occlusion import (
    SLICE_PAINT_MAX,
    draw_skips,
    grid_shape,
    mask_bounds,
    occlusion_mask,
    paint_squares_into,
    painted_window,
    patch_geometry,
    record_rng,
)
from reference.occlusion import occlusion_mask_reference, paint_squares, patch_centres, placement_indices


class FixedSkips(random.Random):
    """A random.Random whose randint returns a given sequence (checked against its bounds)."""

    def __init__(self, values):
        super().__init__(0)
        self.values = list(values)
        self.used = 0

    def randint(self, a, b):
        value = self.values[self.used]
        assert a <= value <= b, (value, a, b)
        self.used += 1
        return value


def seed_loop_lazy(mask: np.ndarray, box, rng: random.Random) -> np.ndarray:
    """The original's loop verbatim, drawing each skip only when needed (as the original did)."""
    x1, y1, x2, y2 = box
    patch_size = max(int(min(abs(x2 - x1), abs(y2 - y1)) // 3 * 1), 4)
    out = np.zeros(mask.shape, dtype=bool)
    cur_step = 0
    next_step = rng.randint(0, patch_size // 1)
    gap = int(math.sqrt(patch_size))
    for i in range(0, mask.shape[0], gap):
        for j in range(0, mask.shape[1], gap):
            if cur_step == next_step:
                cur_step = 0
                next_step = rng.randint(0, patch_size // 1)
                if mask[i, j]:
                    left_i = max(0, i - (patch_size // 2))
                    right_i = min(mask.shape[0] - 1, i + (patch_size // 2))
                    left_j = max(0, j - (patch_size // 2))
                    right_j = min(mask.shape[1] - 1, j + (patch_size // 2))
                    out[left_i : right_i + 1, left_j : right_j + 1] = True
            else:
                cur_step += 1
    return out


# ------------------------------------------------------------------ patch size and stride


@pytest.mark.parametrize(
    "box, expected",
    [
        ([0, 0, 30, 12], (4, 2)),  # 12 // 3 = 4
        ([0, 0, 9, 9], (4, 2)),  # 3 -> at least 4
        ([0, 0, 100, 60], (20, 4)),
        ([10, 50, 110, 0], (16, 4)),  # reversed corners: abs sides 100 x 50 -> 16
        ([0.5, 0.0, 20.9, 19.7], (6, 2)),  # floats: 19.7 // 3 = 6.0
        ([0, 0, 300, 300], (100, 10)),
    ],
)
def test_patch_geometry(box, expected):
    assert patch_geometry(box) == expected


# ------------------------------------------------------------------ skips -> placements


def test_placement_indices_follow_the_counter():
    # first placement after skipping 0 points, then 0, then 2 (indices 2, 3), then 1 (index 5)
    skips = np.array([0, 0, 2, 1, 0, 0])
    assert placement_indices(skips, n_grid=9).tolist() == [0, 1, 4, 6, 7, 8]
    assert placement_indices(skips, n_grid=6).tolist() == [0, 1, 4]
    assert placement_indices(np.array([3, 3]), n_grid=3).tolist() == []


def test_draw_skips_bounds_and_both_rng_kinds():
    values = draw_skips(np.random.default_rng(0), 10_000, 5)
    assert values.min() == 0 and values.max() == 5  # inclusive, like random.randint(0, p)
    reference = random.Random(3)
    assert draw_skips(random.Random(3), 50, 4).tolist() == [reference.randint(0, 4) for _ in range(50)]


def test_patch_centres_exact_with_fixed_skips():
    mask = np.ones((6, 6), dtype=bool)
    box = [0, 0, 12, 12]  # p = 4, g = 2: grid rows/cols 0, 2, 4 -> 9 points, 10 draws
    skips = [1, 0, 3, 4, 4, 4, 4, 4, 4, 4]
    ys, xs = patch_centres(mask, box, FixedSkips(skips))
    # placements at grid indices 1, 2, 6 -> (0, 2), (0, 4), (4, 0)
    assert ys.tolist() == [0, 0, 4] and xs.tolist() == [2, 4, 0]
    only_one = np.zeros((6, 6), dtype=bool)
    only_one[0, 4] = True
    only_one[1, 1] = True  # not a grid point: never tested
    ys, xs = patch_centres(only_one, box, FixedSkips(skips))
    assert ys.tolist() == [0] and xs.tolist() == [4]


# ------------------------------------------------------------------ painting


def test_paint_square_odd_and_even_sides():
    odd = paint_squares((7, 7), np.array([3]), np.array([3]), 5)
    expected = np.zeros((7, 7), dtype=bool)
    expected[1:6, 1:6] = True  # side 5
    np.testing.assert_array_equal(odd, expected)
    even = paint_squares((7, 7), np.array([3]), np.array([3]), 4)
    np.testing.assert_array_equal(even, expected)  # p // 2 = 2 either side: side 5 (as the original)
    six = paint_squares((9, 9), np.array([4]), np.array([4]), 6)
    expected6 = np.zeros((9, 9), dtype=bool)
    expected6[1:8, 1:8] = True  # side 7
    np.testing.assert_array_equal(six, expected6)


def test_paint_squares_clipped_at_borders_exact():
    painted = paint_squares((5, 6), np.array([0, 4]), np.array([5, 0]), 4)
    expected = np.array(
        [
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(painted, expected)


def test_paint_squares_empty_and_overlapping():
    assert not paint_squares((4, 4), np.array([], dtype=int), np.array([], dtype=int), 4).any()
    overlap = paint_squares((8, 8), np.array([3, 3, 4]), np.array([3, 4, 3]), 4)
    expected = np.zeros((8, 8), dtype=bool)
    expected[1:6, 1:7] = True  # centres (3, 3) and (3, 4)
    expected[2:7, 1:6] = True  # centre (4, 3); (6, 6) stays clear
    np.testing.assert_array_equal(overlap, expected)


@pytest.mark.parametrize("many", [False, True], ids=["sliced", "vectorised"])
def test_paint_squares_matches_slicing_on_random_points(many):
    # few squares are sliced one by one, more than SLICE_PAINT_MAX go through the prefix sums
    rng = np.random.default_rng(7 + many)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        n = int(rng.integers(SLICE_PAINT_MAX + 1, 4 * SLICE_PAINT_MAX)) if many else int(rng.integers(0, 12))
        ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
        if many and rng.random() < 0.5:  # clustered in one corner: the painter works on a crop
            ys, xs = ys // 4, xs // 4 + w - w // 4 - 1
        p = int(rng.integers(4, 20))
        expected = np.zeros((h, w), dtype=bool)
        for y, x in zip(ys, xs):
            expected[max(0, y - p // 2) : y + p // 2 + 1, max(0, x - p // 2) : x + p // 2 + 1] = True
        np.testing.assert_array_equal(paint_squares((h, w), ys, xs, p), expected)
        # painting into a canvas ORs with what is already there
        canvas = rng.random((h, w)) < 0.2
        expected |= canvas
        np.testing.assert_array_equal(paint_squares_into(canvas, ys, xs, p), expected)


# ------------------------------------------------------------------ whole masks


def test_occlusion_mask_exact_small_case():
    mask = np.ones((6, 6), dtype=bool)
    occ = occlusion_mask(mask[None], [[0, 0, 12, 12]], FixedSkips([1, 0, 3, 4, 4, 4, 4, 4, 4, 4]))
    expected = np.array(
        [
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(occ.painted, expected)
    assert occ.n_patches == 3


def test_placements_outside_the_mask_paint_nothing_but_consume_the_counter():
    mask = np.zeros((6, 6), dtype=bool)
    mask[4, 0] = True
    occ = occlusion_mask(mask[None], [[0, 0, 12, 12]], FixedSkips([1, 0, 3, 4, 4, 4, 4, 4, 4, 4]))
    expected = np.zeros((6, 6), dtype=bool)
    expected[2:6, 0:3] = True
    np.testing.assert_array_equal(occ.painted, expected)
    assert occ.n_patches == 1


def test_union_over_boxes_uses_each_boxs_patch_size():
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[:, 4:6, 4:6] = True
    # box 1: p = 4, g = 2 -> 25 grid points, 26 draws; placements at indices 4, 9, 12, 17, 22 =
    # (0, 8), (2, 8), (4, 4), (6, 4), (8, 4): only (4, 4) is inside the mask
    box1_skips = [4, 4, 2] + [4] * 23
    # box 2: p = 9, g = 3 -> 16 grid points, 17 draws; the point (3, 3) is outside, (6, 6) too;
    # first placement at index 0 (0, 0) -> outside; then skip 4 -> index 5 = (3, 3) outside
    box2_skips = [0, 4] + [9] * 15
    occ = occlusion_mask(masks, [[0, 0, 12, 12], [0, 0, 27, 27]], FixedSkips(box1_skips + box2_skips))
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:7, 2:7] = True  # box 1's square at (4, 4), side 5
    np.testing.assert_array_equal(occ.painted, expected)
    assert occ.n_patches == 1
    masks[1, 3, 3] = True  # now box 2's second placement lands: a side-9 square at (3, 3)
    occ = occlusion_mask(masks, [[0, 0, 12, 12], [0, 0, 27, 27]], FixedSkips(box1_skips + box2_skips))
    expected[0:8, 0:8] = True
    np.testing.assert_array_equal(occ.painted, expected)
    assert occ.n_patches == 2


def test_eager_skips_give_the_same_geometry_as_the_originals_lazy_draws():
    rng = np.random.default_rng(11)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(3, 50, 2))
        mask = rng.random((h, w)) < rng.uniform(0.05, 0.9)
        box = [0, 0, float(rng.uniform(1, 3 * w)), float(rng.uniform(1, 3 * h))]
        p, g = patch_geometry(box)
        values = rng.integers(0, p + 1, size=h * w + 2).tolist()
        lazy = seed_loop_lazy(mask, box, FixedSkips(values))
        np.testing.assert_array_equal(occlusion_mask(mask[None], [box], FixedSkips(values)).painted, lazy)


def _two_boxes_two_masks():
    """Box 1 (p = 4) over a blob at the top left, box 2 (p = 9) over one at the bottom right; each
    box's SAM mask holds only its own blob, and box 1's grid walk passes over box 2's blob."""
    masks = np.zeros((2, 24, 24), dtype=bool)
    masks[0, 2:8, 2:8] = True
    masks[1, 14:22, 14:22] = True
    boxes = [[0, 0, 12, 12], [12, 12, 39, 39]]
    # skips of 0: every grid point is a placement (the densest walk, so a union walk cannot miss)
    skips = [[0] * (grid_shape((24, 24), patch_geometry(b)[1])[0] ** 2 + 1) for b in boxes]
    return masks, boxes, skips


@pytest.mark.parametrize("walk", [occlusion_mask, occlusion_mask_reference], ids=["vectorised", "reference"])
def test_each_box_walks_only_its_own_mask_as_the_original(walk):
    # The original tests temp_mask[cnt, i, j]: box cnt places patches only on its own mask, with
    # its own patch side. Walking the union of the masks would let box 1's small patches land on
    # box 2's blob too; this fails on that behaviour.
    masks, boxes, skips = _two_boxes_two_masks()
    occ = walk(masks, boxes, FixedSkips(skips[0] + skips[1]))
    per_box = [seed_loop_lazy(masks[k], boxes[k], FixedSkips(skips[k])) for k in range(2)]
    np.testing.assert_array_equal(occ.painted, per_box[0] | per_box[1])
    union = masks[0] | masks[1]
    union_walk = [seed_loop_lazy(union, boxes[k], FixedSkips(skips[k])) for k in range(2)]
    assert not np.array_equal(occ.painted, union_walk[0] | union_walk[1])
    # box 1 (side 5 squares on a stride-2 grid) painted nothing around box 2's blob
    assert not per_box[0][12:, 12:].any() and union_walk[0][12:, 12:].any()


@pytest.mark.parametrize("walk", [occlusion_mask, occlusion_mask_reference], ids=["vectorised", "reference"])
def test_one_mask_for_several_boxes_is_refused(walk):
    masks, boxes, skips = _two_boxes_two_masks()
    with pytest.raises(ValueError, match="one .*mask per box"):
        walk(masks[0] | masks[1], boxes, FixedSkips(skips[0] + skips[1]))
    with pytest.raises(ValueError, match="one .*mask per box"):
        walk(masks[:1], boxes, FixedSkips(skips[0] + skips[1]))


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (29, 1), (17, 23), (64, 48), (100, 75)])
def test_vectorised_equals_reference_on_random_masks(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    h, w = shape
    for trial in range(6):
        n_boxes = int(rng.integers(1, 4))
        mask = rng.random((n_boxes, *shape)) < rng.uniform(0.0, 1.0, (n_boxes, 1, 1))
        boxes = []
        for _ in range(n_boxes):
            x0, x1 = sorted(rng.uniform(-5, w + 5, 2))
            y0, y1 = sorted(rng.uniform(-5, h + 5, 2))
            boxes.append([x0, y0, x1, y1])
        seed = int(rng.integers(1 << 31))
        fast = occlusion_mask(mask, boxes, np.random.default_rng(seed))
        slow = occlusion_mask_reference(mask, boxes, np.random.default_rng(seed))
        np.testing.assert_array_equal(fast.painted, slow.painted)
        assert fast.n_patches == slow.n_patches
        fast_py = occlusion_mask(mask, boxes, random.Random(seed))
        slow_py = occlusion_mask_reference(mask, boxes, random.Random(seed))
        np.testing.assert_array_equal(fast_py.painted, slow_py.painted)
        assert fast_py.n_patches == slow_py.n_patches


# ------------------------------------------------------------------ the fast path's shortcuts


def test_chunked_draws_continue_one_stream():
    # the fast path draws a box's skips in chunks and must get the values of one big draw; it
    # draws them as integers(1, p + 2), which must be the reference's integers(0, p + 1) plus one
    for seed in range(30):
        p, n = 3 + seed * 7, 500
        steps = np.random.default_rng(seed).integers(1, p + 2, size=n, dtype=np.int64)
        np.testing.assert_array_equal(steps, draw_skips(np.random.default_rng(seed), n, p) + 1)
    for seed in range(30):
        rs = np.random.default_rng(seed)
        p, n = int(rs.integers(4, 400)), int(rs.integers(1, 3000))
        whole = draw_skips(np.random.default_rng(seed + 100), n, p)
        rng = np.random.default_rng(seed + 100)
        cuts = [0, *sorted(int(c) for c in rs.integers(0, n + 1, 4)), n]
        parts = [draw_skips(rng, b - a, p) for a, b in zip(cuts[:-1], cuts[1:])]
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_mask_bounds():
    assert mask_bounds(np.zeros((5, 7), dtype=bool)) is None
    assert mask_bounds(np.zeros((0, 7), dtype=bool)) is None
    corner = np.zeros((5, 7), dtype=bool)
    corner[4, 6] = True
    assert mask_bounds(corner) == (4, 4, 6, 6)
    corner[0, 0] = True
    assert mask_bounds(corner) == (0, 4, 0, 6)
    assert mask_bounds(np.ones((1, 1), dtype=bool)) == (0, 0, 0, 0)
    rng = np.random.default_rng(3)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        mask = rng.random((h, w)) < rng.uniform(0, 0.02)
        if rng.random() < 0.3:  # a strided view, Fortran order or 0/1 bytes: made contiguous bool
            mask = np.asfortranarray(mask) if rng.random() < 0.5 else mask.astype(np.uint8)
        ys, xs = np.nonzero(mask)
        expected = (ys.min(), ys.max(), xs.min(), xs.max()) if len(ys) else None
        assert mask_bounds(mask) == expected
        assert mask_bounds(mask[:, ::2]) == mask_bounds(np.ascontiguousarray(mask[:, ::2]))


def test_painted_window_holds_every_painted_pixel_and_no_spare_row_or_column():
    rng = np.random.default_rng(4)
    assert painted_window(np.zeros((4, 6), dtype=bool)) == (slice(0, 0), slice(0, 0))
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        painted = rng.random((h, w)) < rng.uniform(0, 0.05)
        window = painted_window(painted)
        crop = painted[window]
        assert int(crop.sum()) == int(painted.sum())
        if painted.any():  # tight: every edge row and column of the window holds a painted pixel
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
        # filling through the window is filling the whole image
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected, got = pixels.copy(), pixels.copy()
        expected[painted] = (123, 116, 103)
        got[window][crop] = (123, 116, 103)
        np.testing.assert_array_equal(got, expected)


def _random_mask(rng, h, w):
    """Masks of the shapes occlusion meets, border-touching and tiny ones included."""
    kind = int(rng.integers(0, 6))
    mask = np.zeros((h, w), dtype=bool)
    if kind == 0:  # an ellipse anywhere, possibly cut by the image border
        cy, cx = rng.uniform(-0.2 * h, 1.2 * h), rng.uniform(-0.2 * w, 1.2 * w)
        ry, rx = rng.uniform(0.5, h), rng.uniform(0.5, w)
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    elif kind == 1:  # one pixel, often in a corner or on an edge
        y = int(rng.choice([0, h - 1, rng.integers(0, h)]))
        x = int(rng.choice([0, w - 1, rng.integers(0, w)]))
        mask[y, x] = True
    elif kind == 2:  # sparse specks
        mask = rng.random((h, w)) < rng.uniform(0.001, 0.05)
    elif kind == 3:  # everything
        mask[:] = True
    elif kind == 4:  # a band along one border
        side = int(rng.integers(0, 4))
        k = int(rng.integers(1, max(2, min(h, w) // 2)))
        [mask[:k], mask[-k:], mask[:, :k], mask[:, -k:]][side][...] = True
    else:  # a few blobs far apart
        for _ in range(int(rng.integers(2, 5))):
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            mask[y0 : y0 + int(rng.integers(1, 8)), x0 : x0 + int(rng.integers(1, 8))] = True
    return mask


def _random_box(rng, h, w):
    """Boxes from degenerate (p = 4) to far larger than the image (p in the hundreds)."""
    side = float(np.exp(rng.uniform(np.log(0.5), np.log(4 * max(h, w)))))
    bw, bh = side * rng.uniform(1, 2), side
    x0, y0 = rng.uniform(-0.3 * w, w), rng.uniform(-0.3 * h, h)
    return [x0, y0, x0 + bw, y0 + bh] if rng.random() < 0.8 else [x0 + bw, y0, x0, y0 + bh]


@pytest.mark.parametrize("shape", [(1, 1), (1, 60), (45, 1), (7, 5), (37, 53), (96, 128), (120, 160)])
def test_fast_path_equals_reference_on_many_masks_boxes_and_patch_sizes(shape):
    rng = np.random.default_rng(shape[0] * 7919 + shape[1])
    h, w = shape
    patch_sides = set()
    for trial in range(24):
        boxes = [_random_box(rng, h, w) for _ in range(int(rng.choice([1, 1, 2, 3])))]
        mask = np.stack([_random_mask(rng, h, w) for _ in boxes])
        patch_sides.update(patch_geometry(b)[0] for b in boxes)
        seed = int(rng.integers(1 << 31))
        make = random.Random if trial % 4 == 3 else np.random.default_rng
        fast = occlusion_mask(mask, boxes, make(seed))
        slow = occlusion_mask_reference(mask, boxes, make(seed))
        np.testing.assert_array_equal(fast.painted, slow.painted, err_msg=f"trial {trial}: {boxes}")
        assert fast.n_patches == slow.n_patches
    # met: the smallest patches and ones wider than the image's shorter side
    assert min(patch_sides) == 4 and max(patch_sides) >= min(h, w)


def test_fast_path_equals_reference_at_full_size_near_the_borders():
    # 640x480, p = 4 (the longest walk): masks touching the bottom-right corner and the top edge
    rng = np.random.default_rng(21)
    for mask_slice in [np.s_[470:, 600:], np.s_[:3, 200:260], np.s_[240:250, :]]:
        boxes = [[10, 10, 25, 22]] if rng.random() < 0.5 else [[10, 10, 25, 22], [0, 0, 90, 60]]
        mask = np.zeros((len(boxes), 480, 640), dtype=bool)
        mask[(0, *mask_slice)] = True  # the first box's mask; a second box's stays empty
        seed = int(rng.integers(1 << 31))
        fast = occlusion_mask(mask, boxes, np.random.default_rng(seed))
        slow = occlusion_mask_reference(mask, boxes, np.random.default_rng(seed))
        np.testing.assert_array_equal(fast.painted, slow.painted)
        assert fast.n_patches == slow.n_patches > 0


@pytest.mark.parametrize("rows", [slice(0, 0), slice(0, 2), slice(20, 24), slice(46, 48)])
def test_patch_centres_leaves_the_generator_where_the_reference_does(rows):
    # a later box of the same entity continues the stream, so every box but the last draws all
    mask = np.zeros((48, 64), dtype=bool)
    mask[rows, 5:9] = True
    box = [0, 0, 20, 14]  # p = 4: 24 x 32 grid, 769 skips
    p, g = patch_geometry(box)
    ny, nx = grid_shape(mask.shape, g)
    for make in (np.random.default_rng, random.Random):
        ours, theirs = make(5), make(5)
        patch_centres(mask, box, ours)
        draw_skips(theirs, ny * nx + 1, p)
        assert draw_skips(ours, 10, 1000).tolist() == draw_skips(theirs, 10, 1000).tolist()


def test_non_bool_and_non_contiguous_masks():
    rng = np.random.default_rng(8)
    base = np.stack([_random_mask(rng, 90, 140) | (rng.random((90, 140)) < 0.01) for _ in range(2)])
    boxes = [[20, 10, 50, 40], [0, 0, 12, 12]]
    expected = occlusion_mask_reference(base[:, :, ::2], boxes, np.random.default_rng(2))
    strided = base[:, :, ::2]
    for variant in (strided, np.asfortranarray(strided), strided.astype(np.uint8)):
        got = occlusion_mask(variant, boxes, np.random.default_rng(2))
        np.testing.assert_array_equal(got.painted, expected.painted)
        assert got.n_patches == expected.n_patches


# ------------------------------------------------------------------ determinism

EXPECTED_FIRST_DRAW = 985726131  # record_rng(0, "COCO_1-dog").integers(0, 2**30), any process


def test_record_rng_depends_only_on_seed_and_id():
    first = record_rng(0, "COCO_1-dog").integers(0, 1 << 30, 5)
    np.testing.assert_array_equal(first, record_rng(0, "COCO_1-dog").integers(0, 1 << 30, 5))
    assert not np.array_equal(first, record_rng(0, "COCO_1-cat").integers(0, 1 << 30, 5))
    assert not np.array_equal(first, record_rng(1, "COCO_1-dog").integers(0, 1 << 30, 5))
    # a stable hash (sha256), not Python's salted hash(): the value is the same in every process
    assert int(record_rng(0, "COCO_1-dog").integers(0, 1 << 30)) == EXPECTED_FIRST_DRAW


def test_same_id_same_occlusion():
    rng = np.random.default_rng(5)
    mask = rng.random((1, 40, 50)) < 0.5
    boxes = [[3, 4, 40, 30]]
    a = occlusion_mask(mask, boxes, record_rng(42, "x-dog"))
    b = occlusion_mask(mask, boxes, record_rng(42, "x-dog"))
    c = occlusion_mask(mask, boxes, record_rng(42, "x-cat"))
    np.testing.assert_array_equal(a.painted, b.painted)
    assert not np.array_equal(a.painted, c.painted)


def test_box_masks_cover_exactly_the_box_pixels():
    import torch

    from groundflow.vision.segmentation import box_masks

    m = box_masks(torch.tensor([[1.0, 0.0, 3.0, 2.0]]), 3, 4)
    assert m.shape == (1, 3, 4)
    assert m[0].int().tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
