"""CVC caption ingest of a COCO-sized file: the shared streamed reader (`groundflow.io.lines`)
against the whole-file reading it replaced (`tests/reference/cvc_ingest.py`, commit 88df119).

    .venv/bin/python bench/ingest_speed.py [--images 82783] [--per-image 5] [--format jsonl] [--repeat 3] [--clock cpu]

The bench writes, in a temporary folder, a captions file of COCO train2014's size (82,783 images x
5 captions = 413,915 records; about 1 in 50 captions in Greek, Japanese or with emoji) and one
empty file per image (ingest checks each image path with one lstat, never decodes it). `--format`:
`jsonl` (one record per line), `coco` (captions_train2014.json's layout, on one line as the
official file) or `list` (a JSON list). Both versions ingest the same file with the same checks
(only the reading differs) and must give the same kept table and rejects (checked). Timed: whole
`ingest_captions` calls, the two versions alternating, `--repeat` times each, the fastest
counting (`--clock cpu`: the process's CPU time, which leaves out waits for a CPU that other work
holds). Then each runs once more under tracemalloc for its peak of Python allocations (the file's
text, the lines, the records and tables built). Reported: seconds, the ratio new/old (below 1 is
faster), peak MiB of each.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.append(str(ROOT / "tests"))  # last: tests/reference as `reference`, shadowing nothing installed

from groundflow.cvc.ingest import ingest_captions  # noqa: E402
from reference.cvc_ingest import ingest_captions_whole_file  # noqa: E402

WORDS = ("a man riding a wave on top of a surfboard", "two giraffes standing next to a tall tree",
         "a plate of food with broccoli and rice", "a red double decker bus on a city street",
         "a cat sleeping on a laptop keyboard", "people walking along a beach with umbrellas")
OTHER_SCRIPTS = ("μια γάτα κοιμάται σε ένα πληκτρολόγιο", "猫がキーボードの上で寝ている", "a dog 🐕 catching a frisbee 🥏")


def write_inputs(folder: Path, n_images: int, per_image: int, layout: str, seed: int) -> tuple[Path, Path, int]:
    rng = random.Random(seed)
    images = folder / "train2014"
    images.mkdir()
    names = [f"COCO_train2014_{i:012d}.jpg" for i in range(n_images)]
    for name in names:
        (images / name).touch()
    records = []
    for k in range(n_images * per_image):
        caption = rng.choice(OTHER_SCRIPTS) if rng.random() < 0.02 else rng.choice(WORDS)
        records.append((k, k % n_images, f"{caption} {k}"))
    path = folder / ("captions.jsonl" if layout == "jsonl" else "captions.json")
    with path.open("w", encoding="utf-8") as out:
        if layout == "jsonl":
            for k, image, caption in records:
                out.write(json.dumps({"image": names[image], "text_input": caption}, ensure_ascii=False) + "\n")
        elif layout == "list":
            json.dump([{"image": names[image], "text_input": caption} for _, image, caption in records], out,
                      ensure_ascii=False)
        else:
            json.dump({"images": [{"id": i, "file_name": name} for i, name in enumerate(names)],
                       "annotations": [{"id": k, "image_id": image, "caption": caption}
                                       for k, image, caption in records]}, out, ensure_ascii=False)
    return path, images, len(records)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=82_783)
    ap.add_argument("--per-image", type=int, default=5)
    ap.add_argument("--format", choices=("jsonl", "coco", "list"), default="jsonl")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each version; the fastest counts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    versions = {"old (whole file)": ingest_captions_whole_file, "new (io.lines)": ingest_captions}
    with tempfile.TemporaryDirectory() as tmp:
        path, images, n_records = write_inputs(Path(tmp), args.images, args.per_image, args.format, args.seed)
        size = path.stat().st_size
        print(f"{args.format}: {n_records} records, {size / 2**20:.1f} MiB, {args.images} images")
        outputs, best = {}, {name: float("inf") for name in versions}
        for _ in range(args.repeat):
            for name, ingest in versions.items():
                start = clock()
                result, ids = ingest(path, images)
                best[name] = min(best[name], clock() - start)
                outputs[name] = (result, ids)
                del result, ids
        (old, old_ids), (new, new_ids) = outputs.values()
        assert old_ids == new_ids and old.kept.equals(new.kept) and old.rejects.equals(new.rejects), \
            "the two versions disagree"
        assert len(new.kept) == n_records, f"{n_records - len(new.kept)} records rejected"
        del outputs, old, new
        peaks = {}
        for name, ingest in versions.items():
            tracemalloc.start()
            ingest(path, images)
            peaks[name] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    for name in versions:
        print(f"{name:18s} {best[name]:7.2f} s ({args.clock})   peak {peaks[name] / 2**20:7.1f} MiB")
    old_name, new_name = versions
    print(f"ratio new/old: time {best[new_name] / best[old_name]:.3f}, peak memory "
          f"{peaks[new_name] / peaks[old_name]:.3f}")


if __name__ == "__main__":
    main()
