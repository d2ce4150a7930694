"""A fake external grounder (stand-in for a GLIP wrapper script) for tests.

Usage: fake_glip.py --requests R.jsonl --boxes B.jsonl --threshold T [--omit ID ...]
                    [--extra-id ID] [--fail]

Reads the requests (groundflow.vision.grounding protocol) and writes, for every request not in
--omit, three deterministic boxes:
  1. the centred box covering the middle half of the image, scored label_score(label);
  2. the whole image grown by 10 px on every side (clipping must bring it back), scored
     label_score(label) - 0.25;
  3. a box lying entirely right of the image (zero area once clipped), scored 0.99.
Boxes are written unsorted (lowest score first) to check that the adapter sorts them.
--extra-id adds a line for an id that was never requested; --fail exits 3 with a message on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

from PIL import Image


def label_score(label: str) -> float:
    """A score in [0.5, 0.9) fixed by the label's SHA-256."""
    digest = int(hashlib.sha256(label.encode("utf-8")).hexdigest()[:8], 16)
    return round(0.5 + 0.4 * digest / 2**32, 6)


def boxes_for(width: int, height: int, label: str) -> tuple[list[list[float]], list[float]]:
    score = label_score(label)
    centred = [width / 4, height / 4, 3 * width / 4, 3 * height / 4]
    grown = [-10.0, -10.0, width + 10.0, height + 10.0]
    outside = [width + 5.0, 0.0, width + 50.0, float(height)]
    return [outside, grown, centred], [0.99, round(score - 0.25, 6), score]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", required=True)
    parser.add_argument("--boxes", required=True)
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--omit", action="append", default=[])
    parser.add_argument("--extra-id")
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args(argv)
    if args.fail:
        print("fake_glip: CUDA out of memory (simulated)", file=sys.stderr)
        return 3
    lines = []
    with open(args.requests, encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            if request["id"] in args.omit:
                continue
            with Image.open(request["image"]) as im:
                width, height = im.size
            boxes, scores = boxes_for(width, height, request["label"])
            lines.append({"id": request["id"], "boxes": boxes, "box_scores": scores})
    if args.extra_id:
        lines.append({"id": args.extra_id, "boxes": [[0, 0, 1, 1]], "box_scores": [0.9]})
    with open(args.boxes, "w", encoding="utf-8") as f:
        for row in lines:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
