"""The bundled demo input: drawn scenes of nameable objects with captions, plus bad inputs.

`make_fixture` writes a small caption set in the original's record format that exercises every
branch of ingest and the image check (truncated, missing, convertible and escaping images, broken
JSON lines, empty captions, duplicate ids). `make_coco_manifest` writes a large COCO-style caption
file, without images, for scale tests of ingest.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from groundflow.cvc.ingest import normalize_caption, record_id
from groundflow.io.artifacts import atomic_write_bytes, atomic_write_text

WIDTH, HEIGHT = 320, 240
HORIZON = 120

COLOURS = {
    "red": (215, 40, 40),
    "blue": (40, 80, 210),
    "green": (40, 160, 60),
    "yellow": (240, 210, 40),
    "orange": (240, 140, 30),
    "purple": (130, 60, 170),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "brown": (120, 75, 35),
    "pink": (240, 140, 180),
}
# kind -> (plural, colours it may take (None: any), where it sits, size range in px, may repeat)
KINDS = {
    "ball": ("balls", None, "ground", (10, 24), True),
    "sun": ("suns", ("yellow", "orange"), "sky", (16, 28), False),
    "house": ("houses", ("red", "white", "yellow", "brown", "blue"), "ground", (30, 48), False),
    "tree": ("trees", ("green",), "ground", (24, 44), True),
    "car": ("cars", None, "ground", (20, 34), True),
    "boat": ("boats", ("white", "red", "blue", "brown"), "ground", (20, 34), True),
    "kite": ("kites", None, "sky", (12, 22), True),
    "cup": ("cups", None, "ground", (10, 18), True),
    "umbrella": ("umbrellas", None, "ground", (16, 28), False),
    "clock": ("clocks", ("white", "black", "brown"), "any", (12, 22), False),
    "apple": ("apples", ("red", "green", "yellow"), "ground", (8, 14), True),
    "book": ("books", None, "ground", (10, 18), True),
    "chair": ("chairs", ("brown", "black", "red", "blue"), "ground", (14, 24), True),
    "table": ("tables", ("brown", "white", "black"), "ground", (22, 36), False),
    # an unnamed shape: captions call it "object", the very word questions use to hide an entity
    "object": ("objects", None, "any", (10, 18), False),
}
# A caption with no nameable phrase, as real caption sets have: entity extraction must reject it.
NO_ENTITY_CAPTION = "What is this?"
VERBS = {  # kind -> (singular verb phrase, plural verb phrase)
    "kite": ("flies", "fly"),
    "ball": ("lies", "lie"),
    "boat": ("floats", "float"),
    "car": ("is parked", "are parked"),
    "sun": ("shines", "shine"),
    "tree": ("stands", "stand"),
    "house": ("stands", "stand"),
}
NUMBERS = {2: "two", 3: "three"}


@dataclass
class _Object:
    kind: str
    colour: str
    size_word: str | None
    cx: int
    cy: int
    radius: int


@dataclass
class _Scene:
    image: Image.Image
    objects: list[_Object]


# --- drawing -------------------------------------------------------------------------------------


def _background(rng: np.random.Generator) -> Image.Image:
    sky_top = np.array([90, 150, 230]) + rng.integers(-20, 21, 3)
    sky_bottom = np.array([190, 220, 250]) + rng.integers(-15, 16, 3)
    ground = np.array([[90, 170, 80], [200, 180, 120], [110, 150, 200]])[rng.integers(0, 3)]
    t = np.linspace(0.0, 1.0, HORIZON)[:, None]
    sky = (1 - t) * sky_top + t * sky_bottom
    rows = np.concatenate([sky, np.tile(ground, (HEIGHT - HORIZON, 1))], axis=0)
    pixels = np.broadcast_to(rows[:, None, :], (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _draw(d: ImageDraw.ImageDraw, o: _Object) -> None:
    x, y, r, c = o.cx, o.cy, o.radius, COLOURS[o.colour]
    dark = tuple(max(v - 70, 0) for v in c)
    if o.kind in ("ball", "apple"):
        d.ellipse([x - r, y - r, x + r, y + r], fill=c, outline=dark)
        if o.kind == "apple":
            d.line([x, y - r, x + 2, y - r - 5], fill=(90, 60, 20), width=2)
            d.ellipse([x + 2, y - r - 6, x + 8, y - r - 2], fill=(40, 160, 60))
    elif o.kind == "sun":
        for angle in np.linspace(0, 2 * np.pi, 12, endpoint=False):
            dx, dy = np.cos(angle), np.sin(angle)
            d.line([x + dx * r * 1.2, y + dy * r * 1.2, x + dx * r * 1.6, y + dy * r * 1.6], fill=c, width=2)
        d.ellipse([x - r, y - r, x + r, y + r], fill=c)
    elif o.kind == "house":
        d.rectangle([x - r, y - r // 3, x + r, y + r], fill=c, outline=dark)
        d.polygon([(x - r - 4, y - r // 3), (x + r + 4, y - r // 3), (x, y - r - r // 2)], fill=(150, 40, 30))
        d.rectangle([x - r // 5, y + r // 3, x + r // 5, y + r], fill=(90, 60, 30))
    elif o.kind == "tree":
        d.rectangle([x - r // 6, y, x + r // 6, y + r], fill=(110, 70, 30))
        d.ellipse([x - r * 2 // 3, y - r, x + r * 2 // 3, y + r // 4], fill=c, outline=dark)
    elif o.kind == "car":
        d.rectangle([x - r, y - r // 4, x + r, y + r // 3], fill=c, outline=dark)
        d.rectangle([x - r // 2, y - r // 2 - 2, x + r // 2, y - r // 4], fill=c, outline=dark)
        for wx in (x - r // 2, x + r // 2):
            d.ellipse([wx - r // 4, y + r // 6, wx + r // 4, y + r // 6 + r // 2], fill=(20, 20, 20))
    elif o.kind == "boat":
        d.polygon([(x - r, y), (x + r, y), (x + r * 2 // 3, y + r // 3), (x - r * 2 // 3, y + r // 3)], fill=c)
        d.line([x, y, x, y - r], fill=(60, 40, 20), width=2)
        d.polygon([(x + 1, y - r), (x + 1, y - 2), (x + r * 2 // 3, y - 2)], fill=(250, 250, 250))
    elif o.kind == "kite":
        d.polygon([(x, y - r), (x + r * 2 // 3, y), (x, y + r), (x - r * 2 // 3, y)], fill=c, outline=dark)
        d.line([x, y + r, x - r // 2, y + 2 * r, x + r // 3, y + 3 * r], fill=dark, width=1)
    elif o.kind == "cup":
        d.polygon([(x - r, y - r), (x + r, y - r), (x + r * 2 // 3, y + r), (x - r * 2 // 3, y + r)], fill=c, outline=dark)
        d.arc([x + r * 2 // 3, y - r // 2, x + r + r // 2, y + r // 2], -90, 90, fill=dark, width=2)
    elif o.kind == "umbrella":
        d.pieslice([x - r, y - r, x + r, y + r], 180, 360, fill=c, outline=dark)
        d.line([x, y, x, y + r], fill=(40, 40, 40), width=2)
        d.arc([x - r // 4, y + r - r // 4, x, y + r + r // 4], 0, 180, fill=(40, 40, 40), width=2)
    elif o.kind == "clock":
        d.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 240), outline=c, width=max(r // 4, 2))
        d.line([x, y, x, y - r * 2 // 3], fill=(0, 0, 0), width=2)
        d.line([x, y, x + r // 2, y], fill=(0, 0, 0), width=2)
    elif o.kind == "book":
        d.rectangle([x - r, y - r * 2 // 3, x + r, y + r * 2 // 3], fill=c, outline=dark)
        d.line([x - r + 3, y - r * 2 // 3, x - r + 3, y + r * 2 // 3], fill=dark, width=2)
    elif o.kind == "chair":
        d.rectangle([x - r // 2, y - r, x - r // 3, y + r], fill=c)
        d.rectangle([x - r // 2, y, x + r // 2, y + r // 6], fill=c)
        d.rectangle([x + r // 3, y, x + r // 2, y + r], fill=c)
    elif o.kind == "table":
        d.rectangle([x - r, y - r // 3, x + r, y - r // 6], fill=c, outline=dark)
        for lx in (x - r + 2, x + r - 5):
            d.rectangle([lx, y - r // 6, lx + 3, y + r // 2], fill=c)
    elif o.kind == "object":
        angles = np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False)
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        d.polygon([(x + rr * np.cos(a), y + rr * np.sin(a)) for a, rr in zip(angles, radii)], fill=c, outline=dark)
    else:  # pragma: no cover - KINDS and _draw are kept in step
        raise ValueError(o.kind)


def _place(rng: np.random.Generator, where: str, radius: int, taken: list[tuple[int, int, int]]):
    """A centre for an object of this radius in its region, avoiding big overlaps if it can."""
    low, high = {"sky": (10, HORIZON - 10), "ground": (HORIZON + 5, HEIGHT - 5), "any": (10, HEIGHT - 5)}[where]
    best = None
    for _ in range(20):
        cx = int(rng.integers(radius + 4, WIDTH - radius - 4))
        cy = int(rng.integers(min(low + radius, high - radius - 1), max(high - radius, low + radius + 1)))
        clearance = min((np.hypot(cx - x, cy - y) - r - radius for x, y, r in taken), default=1e9)
        if best is None or clearance > best[0]:
            best = (clearance, cx, cy)
        if clearance > 0:
            break
    return best[1], best[2]


def _scene(rng: np.random.Generator) -> _Scene:
    n_objects = int(rng.integers(2, 5))
    names = list(KINDS)
    kinds = [names[i] for i in rng.choice(len(names), size=n_objects, replace=False)]
    repeatable = [k for k in kinds if KINDS[k][4]]
    if repeatable and n_objects < 4 and rng.random() < 0.35:
        kinds.append(repeatable[int(rng.integers(len(repeatable)))])  # e.g. "two kites"
    objects: list[_Object] = []
    taken: list[tuple[int, int, int]] = []
    colour_for: dict[str, str] = {}
    for kind in kinds:
        _, colours, where, (smin, smax), _ = KINDS[kind]
        palette = colours or tuple(COLOURS)
        colour = colour_for.setdefault(kind, palette[int(rng.integers(len(palette)))])
        radius = int(rng.integers(smin, smax + 1))
        share = (radius - smin) / max(smax - smin, 1)
        size_word = "small" if share < 0.3 else ("large" if share > 0.7 else None)
        cx, cy = _place(rng, where, radius, taken)
        taken.append((cx, cy, radius))
        objects.append(_Object(kind, colour, size_word, cx, cy, radius))
    image = _background(rng)
    draw = ImageDraw.Draw(image)
    for o in sorted(objects, key=lambda o: o.cy):  # nearer (lower) objects drawn over farther ones
        _draw(draw, o)
    return _Scene(image, objects)


def draw_scene(rng: np.random.Generator) -> tuple[Image.Image, list[str]]:
    """One drawn scene, as the fixture draws them, and the kind of each object in it (a kind drawn
    twice, e.g. two kites, is listed twice; "object" is the unnamed shape)."""
    scene = _scene(rng)
    return scene.image, [o.kind for o in scene.objects]


# --- captions ------------------------------------------------------------------------------------


def _groups(objects: list[_Object]) -> list[list[_Object]]:
    groups: dict[str, list[_Object]] = {}
    for o in objects:
        groups.setdefault(o.kind, []).append(o)
    return list(groups.values())


def _phrase(rng: np.random.Generator, group: list[_Object], article: str = "a") -> str:
    """"a small red ball", "the blue car", "two kites": a noun phrase with modifiers."""
    o = group[0]
    plural = len(group) > 1
    words = []
    if o.size_word and not plural and rng.random() < 0.6:
        words.append(o.size_word)
    if rng.random() < 0.7:
        words.append(o.colour)
    words.append(KINDS[o.kind][0] if plural else o.kind)
    if plural:
        determiner = NUMBERS[len(group)]
    elif article == "a":
        determiner = "an" if words[0][0] in "aeiou" else "a"
    else:
        determiner = article
    return " ".join([determiner, *words])


def _relation(a: list[_Object], b: list[_Object]) -> str:
    """Where group a is relative to group b, from their centres (image y grows downwards)."""
    dx = np.mean([o.cx for o in a]) - np.mean([o.cx for o in b])
    dy = np.mean([o.cy for o in a]) - np.mean([o.cy for o in b])
    if abs(dy) > abs(dx) * 0.8:
        if dy < 0:
            return "above"
        return "under" if b[0].kind in ("sun", "umbrella", "kite", "tree") else "below"
    if abs(dx) < 60:
        return "next to"
    return "to the left of" if dx < 0 else "to the right of"


def _verb(group: list[_Object]) -> str | None:
    verbs = VERBS.get(group[0].kind)
    return None if verbs is None else verbs[len(group) > 1]


def _caption(rng: np.random.Generator, groups: list[list[_Object]]) -> str:
    order = [groups[i] for i in rng.permutation(len(groups))]
    a, b = order[0], order[1]
    pa, pb = _phrase(rng, a), _phrase(rng, b, article="the" if rng.random() < 0.5 else "a")
    rel = _relation(a, b)
    template = int(rng.integers(0, 6))
    if template == 0 and _verb(a):
        text = f"{pa} {_verb(a)} {rel} {pb}"
    elif template == 1 and len(order) > 2:
        pc = _phrase(rng, order[2])
        text = f"a drawing of {pa}, {pb} and {pc}"
    elif template == 2 and len(order) > 2:
        c = order[2]
        text = f"{pa} {rel} {pb} {_relation(b, c)} {_phrase(rng, c, article='the')}"
    elif template == 3:
        text = f"there {'are' if len(a) > 1 else 'is'} {pa} {rel} {pb}"
    elif template == 4:
        text = f"a simple picture with {pa} and {pb}"
    else:
        text = f"{pa} {rel} {pb}"
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def _captions(rng: np.random.Generator, scene: _Scene) -> list[str]:
    groups = _groups(scene.objects)  # at least two kinds: scenes draw 2-4 distinct kinds
    wanted = int(rng.integers(2, 6))
    captions: list[str] = []
    for _ in range(40):
        if len(captions) == wanted:
            break
        text = _caption(rng, groups)
        if text not in captions:
            captions.append(text)
    return captions


# --- files ---------------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _grey16(image: Image.Image) -> Image.Image:
    grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    return Image.fromarray(grey)  # uint16 array -> mode I;16


def make_fixture(
    out_dir: str | os.PathLike, seed: int = 0, n_images: int = 24, include_bad: bool = True
) -> dict:
    """Write out_dir/images/*, out_dir/captions.jsonl (and out_dir/outside.png); return a summary.

    Same seed, same bytes. Records are `{"image": <path relative to images/>, "text_input": ...}`,
    every fourth with an explicit "id". With include_bad, one record per bad case is inserted at
    a seed-chosen position; the summary's bad_cases say what each must produce (the reject id and
    a fragment of the reason, or the kept id and original image mode for convertible images).
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    out = Path(out_dir)
    image_root = out / "images"
    rng = np.random.default_rng(seed)
    files: dict[Path, bytes] = {}
    records: list[dict] = []

    def add_record(image: str, caption: str, explicit_id: str | None = None) -> dict:
        record = {"image": image, "text_input": caption}
        if explicit_id is not None:
            record["id"] = explicit_id
        return record

    for index in range(n_images):
        scene = _scene(rng)
        fmt = "PNG" if index % 3 == 0 else "JPEG"
        name = f"scene_{index:04d}.{'png' if fmt == 'PNG' else 'jpg'}"
        files[image_root / name] = _encode(scene.image, fmt)
        for caption in _captions(rng, scene):
            explicit = f"cap-{len(records):05d}" if len(records) % 4 == 1 else None
            records.append(add_record(name, caption, explicit))
        if index == 1:
            records.append(add_record(name, NO_ENTITY_CAPTION))

    bad_cases: list[dict] = []
    if include_bad:
        bad_records = _bad_inputs(rng, out, image_root, files, records)
        # Spread the bad records over the file, after the first explicit id (line 2), which the
        # duplicate-id record repeats.
        slots = sorted(rng.integers(2, len(records) + 1, size=len(bad_records)).tolist())
        for offset, (slot, (case, record)) in enumerate(zip(slots, bad_records)):
            records.insert(int(slot) + offset, (case, record))
    lines: list[str] = []
    for number, entry in enumerate(records, start=1):
        case, record = entry if isinstance(entry, tuple) else (None, entry)
        if case is None:
            lines.append(json.dumps(record, ensure_ascii=False))
            continue
        if case["case"] == "truncated_json_line":
            full = json.dumps(record, ensure_ascii=False)
            lines.append(full[: len(full) // 2])
        else:
            lines.append(json.dumps(record, ensure_ascii=False))
        bad_cases.append(_expectation(case, record, number))

    for path, data in sorted(files.items()):
        atomic_write_bytes(path, data)
    captions_path = out / "captions.jsonl"
    atomic_write_text(captions_path, "\n".join(lines) + "\n")

    ingest_rejected = sum(1 for c in bad_cases if c["stage"] == "ingest")
    images_rejected = sum(1 for c in bad_cases if c["stage"] == "images")
    return {
        "seed": seed,
        "captions": str(captions_path),
        "image_root": str(image_root),
        "n_images": sum(1 for p in files if p.parent == image_root),
        "n_records": len(lines),
        "n_ingest_kept": len(lines) - ingest_rejected,
        "n_images_kept": len(lines) - ingest_rejected - images_rejected,
        "bad_cases": bad_cases,
    }


def _bad_inputs(rng, out: Path, image_root: Path, files: dict, records: list[dict]) -> list:
    """(case description, record) for each bad input; image files go into `files`."""
    bad: list = []

    def scene_record(name: str, scene: _Scene) -> dict:
        caption = _captions(rng, scene)[0]
        return {"image": name, "text_input": caption}

    scene = _scene(rng)
    jpeg = _encode(scene.image, "JPEG")
    # Keep the header and the first part of the scan: opens fine, fails on decode.
    files[image_root / "bad_truncated.jpg"] = jpeg[: len(jpeg) * 3 // 5]
    bad.append(({"case": "truncated_image", "stage": "images", "reason": "truncated"},
                scene_record("bad_truncated.jpg", scene)))

    scene = _scene(rng)
    bad.append(({"case": "missing_image", "stage": "ingest", "reason": "missing image file"},
                scene_record("bad_missing.jpg", scene)))

    scene = _scene(rng)
    files[image_root / "convert_cmyk.jpg"] = _encode(scene.image.convert("CMYK"), "JPEG")
    bad.append(({"case": "cmyk_jpeg", "stage": None, "image_mode": "CMYK"},
                scene_record("convert_cmyk.jpg", scene)))

    scene = _scene(rng)
    files[image_root / "convert_grey.png"] = _encode(scene.image.convert("L"), "PNG")
    bad.append(({"case": "greyscale_png", "stage": None, "image_mode": "L"},
                scene_record("convert_grey.png", scene)))

    scene = _scene(rng)
    files[image_root / "convert_grey16.png"] = _encode(_grey16(scene.image), "PNG")
    bad.append(({"case": "grey16_png", "stage": None, "image_mode": "I;16"},
                scene_record("convert_grey16.png", scene)))

    first_name = records[0]["image"]
    bad.append(({"case": "empty_caption", "stage": "ingest", "reason": "empty caption"},
                {"image": first_name, "text_input": "  \t "}))

    bad.append(({"case": "truncated_json_line", "stage": "ingest", "reason": "is not valid JSON"},
                {"image": first_name, "text_input": "a red ball next to a house under the sun"}))

    first_explicit = next(r["id"] for r in records if "id" in r)
    bad.append(({"case": "duplicate_id", "stage": "ingest", "reason": f"duplicate id {first_explicit!r}"},
                {"image": records[-1]["image"], "text_input": "a duplicate caption record", "id": first_explicit}))

    scene = _scene(rng)
    files[out / "outside.png"] = _encode(scene.image, "PNG")
    bad.append(({"case": "path_escape", "stage": "ingest", "reason": "escapes the image root"},
                scene_record("../outside.png", scene)))
    return bad


def _expectation(case: dict, record: dict, line: int) -> dict:
    """What ingest/check_images must do with this record: its id, stage and reason or mode."""
    expected = dict(case, line=line)
    if case["case"] in ("truncated_json_line", "duplicate_id"):
        expected["id"] = f"line:{line}"
    elif "id" in record:
        expected["id"] = record["id"]
    else:
        image = posixpath.normpath(record["image"])
        expected["id"] = record_id(image, normalize_caption(record["text_input"]))
    expected["expect"] = "kept" if case["stage"] is None else "reject"
    return expected


# --- scale test input ----------------------------------------------------------------------------


def make_coco_manifest(
    n_images: int, captions_per_image: int, out_path: str | os.PathLike, seed: int = 0
) -> dict:
    """Write a COCO captions file (captions_train2014.json layout) without image files.

    Built with vectorised choices and one string format per caption, so 80k images with 400k
    captions take a few seconds.
    """
    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    colours = list(COLOURS)
    relations = ["next to", "above", "under", "to the left of", "to the right of", "near"]
    n = n_images * captions_per_image
    ka = rng.integers(0, len(kinds), n)
    kb = (ka + rng.integers(1, len(kinds), n)) % len(kinds)
    ca = rng.integers(0, len(colours), n)
    rel = rng.integers(0, len(relations), n)
    images = [
        {"id": i + 1, "file_name": f"COCO_train2014_{i + 1:012d}.jpg", "width": WIDTH, "height": HEIGHT}
        for i in range(n_images)
    ]
    annotations = [
        {
            "id": j + 1,
            "image_id": j // captions_per_image + 1,
            "caption": f"A {colours[c]} {kinds[a]} {relations[r]} a {kinds[b]}.",
        }
        for j, (a, b, c, r) in enumerate(zip(ka.tolist(), kb.tolist(), ca.tolist(), rel.tolist()))
    ]
    doc = {
        "info": {"description": "groundflow synthetic COCO captions manifest", "seed": seed},
        "licenses": [],
        "images": images,
        "annotations": annotations,
    }
    atomic_write_text(out_path, json.dumps(doc, separators=(",", ":")))
    return {"path": str(out_path), "n_images": n_images, "n_captions": n}


# --- instruction data in the LLaVA-665k format ---------------------------------------------------

# Ground colours of `_background`, named for the answers about them.
_GROUND_NAMES = {(90, 170, 80): "green", (200, 180, 120): "sandy yellow", (110, 150, 200): "blue"}
_TEXT_ONLY_TURNS = [
    ("What colour do you get when you mix blue and yellow paint?", "You get green."),
    ("Name three things that are usually found in a kitchen.", "A stove, a refrigerator and a sink."),
]


def _ground_colour(pixels: np.ndarray) -> str:
    """The named ground colour of a fixture scene: the bottom row's commonest colour, nearest name."""
    bottom = pixels[-1].reshape(-1, 3).astype(np.int64)
    values, counts = np.unique(bottom, axis=0, return_counts=True)
    commonest = values[int(np.argmax(counts))]
    names = list(_GROUND_NAMES)
    distances = [int(((commonest - np.asarray(n)) ** 2).sum()) for n in names]
    return _GROUND_NAMES[names[int(np.argmin(distances))]]


def _image_turns(rng: np.random.Generator, ground: str, multi: bool) -> list[tuple[str, str]]:
    pool = [
        ("Is this a photograph or a drawing?", "It is a simple drawing."),
        ("What colour is the ground in this picture?", f"The ground is {ground}."),
        ("Where is the sky in this image?", "The sky fills the upper half of the image."),
        ("Describe the background of the image briefly.",
         f"A blue sky over the upper half and {ground} ground below the horizon."),
    ]
    picks = rng.choice(len(pool), size=2 if multi else 1, replace=False)
    return [pool[int(i)] for i in picks]


def make_instruction_data(
    out_path: str | os.PathLike,
    image_root_images: str | os.PathLike | list[str],
    n: int = 8,
    seed: int = 0,
    image_prefix: str = "",
) -> dict:
    """Write a tiny instruction-data file in the llava_v1_5_mix665k.json format; return a summary.

    `image_root_images` is the fixture's image folder (its scene_* files are used, named relative
    to it) or an explicit list of image paths (used as written, read relative to the current
    folder when they are files). Answers about an image are read off its pixels (the ground's
    colour). Like the real mix the file has a text-only record (no "image" key, an empty "model"
    key), a multi-turn record, and one record whose image token closes the question instead of
    opening it. A record's "image" is `image_prefix` + the image's name, so the file can share one
    training image root with the occluded images (e.g. prefix "resources/fixtures/cvc/images/" with
    the repository as root). Same seed, same bytes.
    """
    if n < 3:
        raise ValueError(f"n must be >= 3 (text-only, multi-turn and single-turn records), got {n}")
    if isinstance(image_root_images, (str, os.PathLike)):
        root = Path(image_root_images)
        names = sorted(p.name for p in root.iterdir() if p.name.startswith("scene_") and p.is_file())
        files = [root / name for name in names]
    else:
        names = [str(name) for name in image_root_images]
        files = [Path(name) for name in names]
    if not names:
        raise ValueError(f"no images in {image_root_images!r}")
    rng = np.random.default_rng(seed)
    grounds: dict[str, str] = {}

    def ground_of(index: int) -> str:
        if names[index] not in grounds:
            from groundflow.vision.image_io import load_rgb

            grounds[names[index]] = _ground_colour(np.asarray(load_rgb(files[index])))
        return grounds[names[index]]

    text_position = int(rng.integers(0, n))
    records: list[dict] = []
    for number in range(n):
        if number == text_position:
            question, answer = _TEXT_ONLY_TURNS[int(rng.integers(len(_TEXT_ONLY_TURNS)))]
            records.append({
                "id": f"text-{number:04d}",
                "model": "",
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
            })
            continue
        index = int(rng.integers(len(names)))
        multi = number == (text_position + 1) % n
        turns = _image_turns(rng, ground_of(index), multi)
        conversations = []
        for turn_number, (question, answer) in enumerate(turns):
            if turn_number == 0:
                trailing = number == (text_position + 2) % n
                question = f"{question}\n<image>" if trailing else f"<image>\n{question}"
            conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        records.append({"id": f"{Path(names[index]).stem}-{number:04d}", "image": image_prefix + names[index],
                        "conversations": conversations})
    atomic_write_text(out_path, json.dumps(records, ensure_ascii=False, indent=1) + "\n")
    return {
        "path": str(out_path),
        "n_records": len(records),
        "n_text_only": sum(1 for r in records if "image" not in r),
        "n_multi_turn": sum(1 for r in records if len(r["conversations"]) > 2),
        "images": sorted({r["image"] for r in records if "image" in r}),
    }
