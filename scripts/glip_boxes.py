"""GLIP boxes for groundflow's grounding stage, run in GLIP's own environment (CVC step 2-1).

GLIP (microsoft/GLIP) is not pip-installable: it is a repository with a compiled
`maskrcnn_benchmark`. This script is the `cvc.grounding.glip_command` the grounding stage runs
(`backend: glip`); it imports only the standard library, numpy, Pillow, torch and GLIP's own
`maskrcnn_benchmark`, never groundflow, so it runs with the Python of GLIP's environment. Steps
are in docs/operations.md, "Grounding with GLIP".

It reads the stage's requests (JSON Lines `{id, image, label, prompt}`, absolute image paths) and
writes the box table the stage reads (JSON Lines `{id, boxes, box_scores}`, pixel
[x0, y0, x1, y1] of the original image, best first); the protocol is in
groundflow/vision/grounding.py. As the seed does, GLIP is prompted with the entity label, the
image goes in as BGR, and every box scoring >= the threshold is kept, not only the best. An entity
without such a box is written with empty lists, which the stage rejects as "no box scoring >= T";
an image that cannot be read is left out of the table (the stage rejects it, naming the id).

    python scripts/glip_boxes.py --glip-root /opt/GLIP \\
        --config configs/pretrain/glip_Swin_L.yaml --weights MODEL/glip_large_model.pth \\
        --requests {requests} --boxes {boxes} --threshold {threshold} --max-boxes {max_boxes}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def read_requests(path: Path) -> list[dict]:
    requests = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"id", "image", "label"} - set(row)
        if missing:
            raise SystemExit(f"glip_boxes: requests line {number} lacks {sorted(missing)}")
        requests.append(row)
    return requests


def load_glip(config_file: Path, weights: Path, device: str, min_image_size: int):
    """GLIPDemo built the way the seed's init_glip does (GLIP's own demo code)."""
    from maskrcnn_benchmark.config import cfg
    from maskrcnn_benchmark.engine.predictor_glip import GLIPDemo

    cfg.local_rank = 0
    cfg.num_gpus = 1
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(["MODEL.WEIGHT", str(weights)])
    cfg.merge_from_list(["MODEL.DEVICE", device])
    return GLIPDemo(cfg, min_image_size=min_image_size, show_mask_heatmaps=False)


def load_bgr(path: str) -> np.ndarray:
    """The image as GLIP's demo expects it (OpenCV's BGR order), converted as the seed does."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))[:, :, [2, 1, 0]]


def kept_boxes(predictions, threshold: float, max_boxes: int | None) -> tuple[list, list]:
    """Boxes scoring >= threshold, best first (stable on ties), at most max_boxes."""
    predictions = predictions.convert("xyxy")
    boxes = np.asarray(predictions.bbox.detach().cpu().numpy(), dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(predictions.get_field("scores").detach().cpu().numpy(), dtype=np.float64).reshape(-1)
    keep = np.flatnonzero(scores >= threshold)
    order = keep[np.argsort(-scores[keep], kind="stable")]
    if max_boxes is not None:
        order = order[:max_boxes]
    return boxes[order].tolist(), scores[order].tolist()


def write_table(path: Path, rows: list[dict]) -> None:
    """All rows or none: a killed run must not leave a partial table the stage would read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glip-root", type=Path, default=Path.cwd(),
                        help="the GLIP repository (default: the working folder); relative --config and "
                             "--weights are read from it")
    parser.add_argument("--config", type=Path, required=True, help="e.g. configs/pretrain/glip_Swin_L.yaml")
    parser.add_argument("--weights", type=Path, required=True, help="e.g. MODEL/glip_large_model.pth")
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--boxes", type=Path, required=True)
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--max-boxes", type=int, default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--min-image-size", type=int, default=800, help="the seed's GLIPDemo setting")
    args = parser.parse_args(argv)

    # The stage's paths may be relative to its working folder; GLIP runs from its repository.
    requests_path, boxes_path = args.requests.resolve(), args.boxes.resolve()
    root = args.glip_root.resolve()
    config_file, weights = root / args.config, root / args.weights
    for what, path in (("GLIP config", config_file), ("GLIP weights", weights)):
        if not path.is_file():
            raise SystemExit(f"glip_boxes: {what} {path} not found")
    sys.path.insert(0, str(root))
    os.chdir(root)

    requests = read_requests(requests_path)
    glip = load_glip(config_file, weights, args.device, args.min_image_size)
    rows = []
    for request in requests:
        try:
            image = load_bgr(request["image"])
        except (OSError, SyntaxError, ValueError) as e:
            print(f"glip_boxes: skipping {request['id']!r}: unreadable image {request['image']}: {e}",
                  file=sys.stderr)
            continue
        # the seed prompts GLIP with the entity label itself (GLIP finds its phrases in it)
        predictions = glip.compute_prediction(image, str(request["label"]))
        boxes, scores = kept_boxes(predictions, args.threshold, args.max_boxes)
        rows.append({"id": request["id"], "boxes": boxes, "box_scores": scores})
    write_table(boxes_path, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
