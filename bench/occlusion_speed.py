"""Occlusion, vectorised against the seed's Python grid loop with the same geometry.

    .venv/bin/python bench/occlusion_speed.py [--instances 60] [--repeat 3] [--clock cpu]

Both versions paint identical masks (checked here on every call). Boxes follow a COCO-like
size mix on 640x480 images (shorter box side log-uniform in [12, 320] px), so patch sides p
range from 4 to ~106. Reported: mean time per instance of each and the ratio of the totals,
overall and per p bucket. Timed: the occlusion calls only; both get a fresh generator built just
before their timer starts (building one costs ~20 us, up to ~200 us with cold caches: as much
as the vectorised call itself, and the stage builds it outside occlusion_mask too). With
--repeat N each instance runs both versions N times, alternating (so every vectorised call
follows a seed-loop call, as with N = 1), and each keeps its fastest time: on a busy machine this
drops the calls that lost the CPU midway; --clock cpu leaves out such waits altogether.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.append(str(ROOT / "tests"))  # last: tests/reference as `reference`, shadowing nothing installed

from groundflow.vision.occlusion import occlusion_mask, patch_geometry  # noqa: E402
from reference.occlusion import occlusion_mask_reference  # noqa: E402


def instance(rng: np.random.Generator, h: int = 480, w: int = 640):
    side = float(np.exp(rng.uniform(np.log(12), np.log(320))))
    bw, bh = side * rng.uniform(1.0, 1.8), side
    if rng.random() < 0.5:
        bw, bh = bh, bw
    bw, bh = min(bw, w - 2), min(bh, h - 2)
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    box = [x0, y0, x0 + bw, y0 + bh]
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = y0 + bh / 2, x0 + bw / 2
    mask = ((yy - cy) / (bh / 2)) ** 2 + ((xx - cx) / (bw / 2)) ** 2 <= 1.0  # an ellipse in its box
    return mask[None], [box]  # occlusion takes one mask per box


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per instance; the fastest counts")
    ap.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="cpu: this thread's CPU time, which leaves out time spent waiting for a busy CPU",
    )
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    rng = np.random.default_rng(args.seed)
    rows = []
    for k in range(args.instances):
        mask, boxes = instance(rng)
        p = patch_geometry(boxes[0])[0]
        t_fast = t_slow = float("inf")
        for _ in range(args.repeat):
            rng_fast, rng_slow = np.random.default_rng(k), np.random.default_rng(k)
            t = clock()
            fast = occlusion_mask(mask, boxes, rng_fast)
            t_fast = min(t_fast, clock() - t)
            t = clock()
            slow = occlusion_mask_reference(mask, boxes, rng_slow)
            t_slow = min(t_slow, clock() - t)
            assert np.array_equal(fast.painted, slow.painted) and fast.n_patches == slow.n_patches
        rows.append((p, t_fast, t_slow))
    rows = np.array(rows)
    print(f"{'patch side p':>14} {'n':>4} {'vectorised ms':>14} {'seed loop ms':>13} {'ratio':>7}")
    for lo, hi in [(4, 8), (9, 24), (25, 64), (65, 10_000)]:
        sel = rows[(rows[:, 0] >= lo) & (rows[:, 0] <= hi)]
        if len(sel):
            print(f"{f'{lo}-{hi}' if hi < 10_000 else f'>={lo}':>14} {len(sel):>4} {sel[:, 1].mean() * 1e3:>14.2f} "
                  f"{sel[:, 2].mean() * 1e3:>13.2f} {sel[:, 2].sum() / sel[:, 1].sum():>6.1f}x")
    print(f"{'all':>14} {len(rows):>4} {rows[:, 1].mean() * 1e3:>14.2f} {rows[:, 2].mean() * 1e3:>13.2f} "
          f"{rows[:, 2].sum() / rows[:, 1].sum():>6.1f}x   (identical masks on all {len(rows)})")


if __name__ == "__main__":
    main()
