"""Plan the paper preset over a COCO-2014-sized manifest: DAG time and job counts.

    .venv/bin/python bench/dryrun_scale.py [--images 82783 --captions-per-image 5]

Writes a synthetic captions_train2014.json-layout manifest (no image files), then runs
`snakemake -n --configfile configs/cvc-paper.yaml <overlay>` for several shard counts and two
manifest sizes. The job count must follow shards, not images; the DAG must build in <= 20 s.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from groundflow.cvc.fixture import make_coco_manifest  # noqa: E402


def plan(manifest: Path, shards: int, workdir: Path) -> tuple[float, int]:
    overlay = workdir / f"overlay-{manifest.stem}-{shards}.yaml"
    overlay.write_text(yaml.safe_dump({
        "shards": shards,
        "results_dir": str(workdir / "results"),
        "cvc": {"captions": str(manifest), "image_root": str(workdir / "images")},
    }))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "1",
           "--configfile", "configs/cvc-paper.yaml", str(overlay)]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"dry run failed:\n{out.stdout}\n{out.stderr}")
    jobs = int(re.search(r"^total\s+(\d+)", out.stdout + out.stderr, re.M).group(1))
    return seconds, jobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=82783)
    ap.add_argument("--captions-per-image", type=int, default=5)
    ap.add_argument("--shards", type=int, nargs="+", default=[16, 64, 256])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        manifests = {}
        for n in (args.images // 8, args.images):
            path = workdir / f"captions_{n}.json"
            t = time.perf_counter()
            info = make_coco_manifest(n, args.captions_per_image, path)
            print(f"manifest: {n} images, {n * args.captions_per_image} captions "
                  f"({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
            manifests[n] = path
        print(f"{'images':>8} {'captions':>9} {'shards':>6} {'jobs':>5} {'dry-run s':>9}")
        for n, path in manifests.items():
            for shards in args.shards:
                seconds, jobs = plan(path, shards, workdir)
                print(f"{n:>8} {n * args.captions_per_image:>9} {shards:>6} {jobs:>5} {seconds:>9.1f}")


if __name__ == "__main__":
    main()
