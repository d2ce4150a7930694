"""Zero-shot grounding of entity labels (CVC step 2-1): boxes for each (image, label) record.

Two backends produce the same columns and the same rejects:

- `detect_boxes`: a transformers zero-shot detector (Grounding DINO by default), batched over
  (image, prompt) pairs.
- `run_external_grounder`: any detector run as an external command, for GLIP, which is not
  pip-installable and runs inside its own repository and environment.

Added columns (contract stage 5): `boxes` (list of [x0, y0, x1, y1], float pixel coordinates in the
original image, clipped to it), `box_scores` (list[float], descending), `box` (the best box) and
`box_score` (its score). As in the seed, every box scoring >= box_threshold is kept, not only the
best one, up to `max_boxes`; a record without such a box is rejected with
"no box scoring >= 0.6 for '<label>' in <image>".

External grounder protocol
--------------------------
`command` is a template; its arguments are split with shlex first and then formatted, so a path
with spaces stays one argument. Fields: {requests} (path of the requests file), {boxes} (path the
command must write), {threshold} (box_threshold: cvc.grounding.glip_threshold), {max_boxes}.
scripts/glip_boxes.py is such a command for GLIP's own repository and environment. It runs without a shell; a non-zero
exit status raises GrounderError with the tail of its stderr.

Requests file (JSON Lines, UTF-8), one object per record:
    {"id": "COCO_1-dog", "image": "/abs/path/COCO_1.jpg", "label": "dog", "prompt": "dog."}

Box table the command must write at {boxes} (JSON Lines, UTF-8), one object per request id:
    {"id": "COCO_1-dog", "boxes": [[x0, y0, x1, y1], ...], "box_scores": [0.71, ...]}
Boxes are pixel coordinates of the original image, top-left origin, x to the right; `boxes` and
`box_scores` have the same length (possibly zero). The command may return boxes below the
threshold (they are dropped here) and need not sort them. An id it does not return is rejected
with a reason saying so; an id that was not requested, a repeated id or a malformed line is an
error.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from groundflow.io.artifacts import atomic_path
from groundflow.io.stage import StageResult, rejects_frame
from groundflow.vision.image_io import ImageError, load_rgb

STAGE = "grounding"
GROUNDING_COLUMNS = ["boxes", "box_scores", "box", "box_score"]


class GrounderError(RuntimeError):
    """The external grounder failed or wrote a box table that breaks the protocol."""


# ---------------------------------------------------------------------------------------------
# Pure helpers


def grounding_prompt(label: str) -> str:
    """The detector prompt for a label: lowercase, ending with "." (Grounding DINO's phrase
    separator; the processor also reads a list of texts without "." as one image's label set)."""
    prompt = " ".join(str(label).lower().split())
    return prompt if prompt.endswith(".") else prompt + "."


# Each backend has its own threshold key: Grounding DINO's and GLIP's scores are on different
# scales, and one shared key let the paper preset's GLIP 0.6 reach Grounding DINO.
THRESHOLD_KEYS = {"grounding_dino": "dino_box_threshold", "glip": "glip_threshold"}


def backend_box_threshold(opts: dict) -> float:
    """The box threshold of the backend `opts` (cvc.grounding) selects, from that backend's key."""
    backend = opts["backend"]
    if backend not in THRESHOLD_KEYS:
        raise ValueError(f"cvc.grounding.backend must be one of {sorted(THRESHOLD_KEYS)}, not {backend!r}")
    return float(opts[THRESHOLD_KEYS[backend]])


def no_box_reason(label: str, image: str, threshold: float) -> str:
    return f"no box scoring >= {threshold:g} for '{label}' in {image}"


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip [x0, y0, x1, y1] boxes (shape (n, 4)) to the image [0, width] x [0, height]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    upper = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(boxes, 0.0, upper)


def filter_boxes(
    boxes: np.ndarray, scores: np.ndarray, threshold: float, max_boxes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes scoring >= threshold with a positive area, best first (ties keep their order), at
    most max_boxes. Returns (boxes (k, 4) float64, scores (k,) float64)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    # A box squeezed to a line by clipping (it lay outside the image) cannot be segmented.
    has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep = np.flatnonzero((scores >= threshold) & has_area)
    order = keep[np.argsort(-scores[keep], kind="stable")][: max(int(max_boxes), 0)]
    return boxes[order], scores[order]


def box_columns(boxes: np.ndarray, scores: np.ndarray) -> dict:
    """The stage's added columns for one record with at least one box (best first)."""
    box_list = [[float(v) for v in box] for box in boxes]
    return {
        "boxes": box_list,
        "box_scores": [float(s) for s in scores],
        "box": box_list[0],
        "box_score": float(scores[0]),
    }


def plan_batches(size_keys: Sequence, batch_size: int) -> list[list[int]]:
    """Row positions grouped into batches of at most batch_size whose images share a size.

    A batch of differently sized images is padded to the largest, and the padding changes a
    detector's outputs (the backbone sees it, and two-stage query selection follows), so a
    record's boxes would depend on its batch neighbours. Same-size batches need no padding, which
    keeps results independent of batch_size. Groups come in order of first appearance; COCO has a
    handful of sizes, so batches stay full.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict = {}
    for position, key in enumerate(size_keys):
        groups.setdefault(key, []).append(position)
    return [
        members[start : start + batch_size]
        for members in groups.values()
        for start in range(0, len(members), batch_size)
    ]


def format_command(command: str | Sequence[str], **fields) -> list[str]:
    """Split a command template into arguments (shlex), then fill {fields} in each argument."""
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not args:
        raise ValueError("empty grounder command")
    try:
        return [arg.format(**fields) for arg in args]
    except (KeyError, IndexError) as e:
        raise ValueError(
            f"grounder command {command!r} uses unknown field {e}; known: {sorted(fields)}"
        ) from None


def parse_box_table(lines: Sequence[str], requested_ids: set[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Parse the external grounder's JSON Lines box table into {id: (boxes (n, 4), scores (n,))}."""
    table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"box table line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GrounderError(f"{where}: not JSON ({e})") from None
        if not isinstance(row, dict) or not {"id", "boxes", "box_scores"} <= set(row):
            raise GrounderError(f"{where}: needs an object with id, boxes, box_scores")
        rid = str(row["id"])
        if rid not in requested_ids:
            raise GrounderError(f"{where}: id {rid!r} was not requested")
        if rid in table:
            raise GrounderError(f"{where}: id {rid!r} appears twice")
        try:
            boxes = np.asarray(row["boxes"], dtype=np.float64).reshape(-1, 4)
            scores = np.asarray(row["box_scores"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise GrounderError(f"{where}: boxes must be [x0, y0, x1, y1] lists, box_scores numbers") from None
        if len(boxes) != len(scores) or len(boxes) != len(row["boxes"]):
            raise GrounderError(f"{where}: {len(row['boxes'])} boxes but {len(scores)} box_scores")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise GrounderError(f"{where}: non-finite box or score")
        table[rid] = (boxes, scores)
    return table


# ---------------------------------------------------------------------------------------------
# Stage functions


def detect_boxes(
    instances_df: pd.DataFrame,
    image_root: str | Path,
    model,
    processor,
    *,
    box_threshold: float = 0.6,
    text_threshold: float = 0.25,
    batch_size: int = 8,
    max_boxes: int = 10,
) -> StageResult:
    """Ground each row's `label` in its `image` with a zero-shot detector (model + processor from
    groundflow.models.grounding_dino.load_grounding_dino). Several (image, prompt) pairs go
    through each forward pass; each distinct image is decoded once per batch. Boxes are kept on
    their score alone, as the seed did with GLIP; `text_threshold` goes to the processor's
    post-processing, where it only picks the phrase tokens a box is labelled with (not stored)."""
    image_root = Path(image_root)
    device = model.device
    dtype = model.dtype
    outcomes: dict[int, dict | str] = {}  # row position -> added columns, or a reject reason
    size_keys = _size_keys(instances_df, image_root)
    for batch in plan_batches(size_keys, batch_size):
        images: dict[str, Image.Image | ImageError] = {}
        for position in batch:
            image = instances_df["image"].iat[position]
            if image not in images:
                try:
                    images[image] = load_rgb(image_root / image)
                except ImageError as e:
                    images[image] = e
        usable = []
        for position in batch:
            loaded = images[instances_df["image"].iat[position]]
            if isinstance(loaded, ImageError):
                outcomes[position] = str(loaded)
            else:
                usable.append(position)
        if not usable:
            continue
        names = [instances_df["image"].iat[p] for p in usable]
        distinct = list(dict.fromkeys(names))
        pictures = [images[name] for name in names]
        prompts = [grounding_prompt(instances_df["label"].iat[p]) for p in usable]
        # Several labels of one image share its pre-processing: each distinct image is resized
        # and normalised once, then its pixels are repeated for every prompt.
        pixels = processor(images=[images[name] for name in distinct], return_tensors="pt")
        repeat = torch.tensor([distinct.index(name) for name in names])
        inputs = processor(text=prompts, padding=True, return_tensors="pt").to(device)
        inputs["pixel_values"] = pixels["pixel_values"][repeat].to(device=device, dtype=dtype)
        if "pixel_mask" in pixels:
            inputs["pixel_mask"] = pixels["pixel_mask"][repeat].to(device)
        with torch.inference_mode():
            outputs = model(**inputs)
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        detections = processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=_strict_below(box_threshold),
            text_threshold=text_threshold,
            target_sizes=[(picture.height, picture.width) for picture in pictures],
        )
        for position, picture, detection in zip(usable, pictures, detections):
            boxes = clip_boxes(detection["boxes"].cpu().numpy(), picture.width, picture.height)
            outcomes[position] = _outcome(
                instances_df, position, boxes, detection["scores"].cpu().numpy(), box_threshold, max_boxes
            )
    return _assemble(instances_df, outcomes)


def run_external_grounder(
    instances_df: pd.DataFrame,
    image_root: str | Path,
    *,
    command: str | Sequence[str],
    box_threshold: float = 0.6,
    max_boxes: int = 10,
    workdir: str | Path,
    timeout: float | None = None,
) -> StageResult:
    """Ground each row's label with an external command (GLIP), following the protocol in the
    module docstring; same columns and rejects as detect_boxes."""
    image_root = Path(image_root)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    requests_path = workdir / "requests.jsonl"
    boxes_path = workdir / "boxes.jsonl"

    outcomes: dict[int, dict | str] = {}
    sizes = _image_sizes(instances_df, image_root)
    requested: dict[str, int] = {}
    lines = []
    for position, size in enumerate(sizes):
        if isinstance(size, str):
            outcomes[position] = size
            continue
        rid = str(instances_df["id"].iat[position])
        label = str(instances_df["label"].iat[position])
        requested[rid] = position
        image_path = (image_root / instances_df["image"].iat[position]).resolve()
        lines.append(json.dumps(
            {"id": rid, "image": str(image_path), "label": label, "prompt": grounding_prompt(label)},
            ensure_ascii=False,
        ))

    if requested:
        with atomic_path(requests_path) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        # A box table left by an earlier run must never pass for this run's answer.
        boxes_path.unlink(missing_ok=True)
        args = format_command(
            command,
            requests=str(requests_path),
            boxes=str(boxes_path),
            threshold=box_threshold,
            max_boxes=max_boxes,
        )
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise GrounderError(f"grounder command {args} could not run: {e}") from None
        if done.returncode != 0:
            raise GrounderError(
                f"grounder command {args} exited with status {done.returncode}; "
                f"stderr tail:\n{(done.stderr or '')[-2000:]}"
            )
        if not boxes_path.is_file():
            raise GrounderError(f"grounder command {args} succeeded but wrote no box table at {boxes_path}")
        table = parse_box_table(boxes_path.read_text(encoding="utf-8").splitlines(), set(requested))
        for rid, position in requested.items():
            if rid not in table:
                outcomes[position] = (
                    f"external grounder returned no result for '{rid}' "
                    f"('{instances_df['label'].iat[position]}' in {instances_df['image'].iat[position]})"
                )
                continue
            width, height = sizes[position]
            boxes, scores = table[rid]
            outcomes[position] = _outcome(
                instances_df, position, clip_boxes(boxes, width, height), scores, box_threshold, max_boxes
            )
    return _assemble(instances_df, outcomes)


# ---------------------------------------------------------------------------------------------
# Internals


def _strict_below(threshold: float) -> float:
    """The float32 just below `threshold`: the processor keeps scores > its threshold, the stage
    promises >= box_threshold (scores are float32)."""
    return float(np.nextafter(np.float32(threshold), np.float32(-math.inf)))


def _outcome(df, position, boxes, scores, threshold, max_boxes) -> dict | str:
    boxes, scores = filter_boxes(boxes, scores, threshold, max_boxes)
    if len(scores) == 0:
        return no_box_reason(df["label"].iat[position], df["image"].iat[position], threshold)
    return box_columns(boxes, scores)


def _size_keys(df: pd.DataFrame, image_root: Path) -> list:
    return [size if isinstance(size, tuple) else None for size in _image_sizes(df, image_root)]


def _image_sizes(df: pd.DataFrame, image_root: Path) -> list[tuple[int, int] | str]:
    """(width, height) per row from the images stage's columns when present, else from each
    distinct image's header; a reason string where the header cannot be read."""
    if {"width", "height"} <= set(df.columns):
        return [(int(w), int(h)) for w, h in zip(df["width"], df["height"])]
    by_image: dict[str, tuple[int, int] | str] = {}
    for image in df["image"].unique():
        path = image_root / image
        try:
            with Image.open(path) as im:
                by_image[image] = im.size
        except FileNotFoundError:
            by_image[image] = f"missing image file {path}"
        except (OSError, SyntaxError, ValueError) as e:
            by_image[image] = f"unreadable image {path}: {e}"
    return [by_image[image] for image in df["image"]]


def _assemble(df: pd.DataFrame, outcomes: dict[int, dict | str]) -> StageResult:
    kept_positions = [p for p in range(len(df)) if isinstance(outcomes.get(p), dict)]
    missing = [p for p in range(len(df)) if p not in outcomes]
    if missing:  # a bug here, never a data problem: fail rather than lose records
        raise RuntimeError(f"grounding produced no outcome for rows {missing[:5]}")
    kept = df.iloc[kept_positions].copy()
    for column in GROUNDING_COLUMNS:
        kept[column] = pd.Series([outcomes[p][column] for p in kept_positions], index=kept.index, dtype=object)
    kept = kept.reset_index(drop=True)
    kept["box_score"] = kept["box_score"].astype(float)
    rejects = rejects_frame(
        STAGE,
        [(str(df["id"].iat[p]), outcomes[p]) for p in range(len(df)) if isinstance(outcomes[p], str)],
    )
    return StageResult(kept=kept, rejects=rejects)
