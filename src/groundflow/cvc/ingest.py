"""Stages 1 and 2 of CVC: read the caption file into records, then check every image once.

Input formats (detected from the content, not the file name):
- a JSON list of records `{"image": <path>, "text_input": <caption>}` (the original's input),
- JSON Lines with the same records, one per line,
- the COCO captions layout (`captions_train2014.json`: `images` + `annotations`).

A record's id is its explicit "id" (JSON/JSONL) or annotation id (COCO); otherwise it is derived
from the image and the normalised caption, so re-ingesting the same file gives the same ids.
Records that cannot be used are rejected with a reason naming where they were in the file; a
record without a usable id is rejected under a pseudo id ("line:17", "index:3", "annotation:5").

The file is read through `groundflow.io.lines`: a byte-order mark and CRLF endings are accepted;
bytes that are not UTF-8 cost the record holding them (a JSON Lines line, rejected with its line
and byte offset; a list element or COCO annotation, rejected naming the field), not the file.
JSON Lines are streamed; a JSON list or COCO file is one document, read whole.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import posixpath
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from PIL import Image

from groundflow.io.lines import (
    first_byte,
    read_json_document,
    read_json_lines,
    undecodable_field,
)
from groundflow.io.stage import StageResult, rejects_frame
from groundflow.vision.image_io import ImageError, load_rgb

INGEST_STAGE = "ingest"
IMAGES_STAGE = "images"
KEPT_COLUMNS = ["id", "image", "image_id", "caption"]
CAPTION_KEYS = ("text_input", "caption")
# Ids of this form are what rejects without a usable id are filed under; a real record may not
# claim one, or a reject could collide with it.
_PSEUDO_ID = re.compile(r"^(line|index|annotation):\d+$")
# POSIX absolute, Windows drive ("C:") or UNC/backslash-rooted paths
_ABSOLUTE = re.compile(r"^(/|\\|[A-Za-z]:)")


class CaptionFileError(ValueError):
    """The caption file as a whole cannot be read (e.g. a truncated JSON list)."""


def record_id(image: str, caption: str) -> str:
    """The derived id of a record without an explicit one: image stem + hash of image and caption."""
    digest = hashlib.sha1(f"{image}\0{caption}".encode("utf-8")).hexdigest()[:10]
    # posixpath, not pathlib: same stem as image_stem for relative POSIX paths, several times faster
    return f"{posixpath.splitext(posixpath.basename(image))[0]}-{digest}"


def normalize_caption(text: str) -> str:
    return " ".join(text.split())


def ingest_captions(
    path: str | os.PathLike, image_root: str | os.PathLike
) -> tuple[StageResult, list[str]]:
    """Read a caption file into records [id, image, image_id, caption]; reject unusable ones.

    Returns the result and every input record id in file order (pseudo ids included), for
    check_accounting. Raises CaptionFileError when the file cannot be parsed at all.
    """
    builder = _RecordBuilder(_ImagePathChecker(image_root))
    for where, pseudo_id, raw in _raw_records(Path(path)):
        builder.add(where, pseudo_id, raw)
    kept = pd.DataFrame(builder.kept, columns=KEPT_COLUMNS).astype(str)
    rejects = rejects_frame(INGEST_STAGE, builder.rejects)
    return StageResult(kept=kept, rejects=rejects), builder.input_ids


# --- parsing -------------------------------------------------------------------------------------


class _Raw(NamedTuple):
    """One record as found in the file, before checks; `error` is set when it could not be parsed,
    `unreadable` (a whole reject reason) when the reader could not decode it."""

    image: object = None
    caption: object = None
    explicit_id: object = None
    has_id: bool = False
    error: str | None = None
    unreadable: str | None = None


def _raw_records(path: Path):
    """Yield (where, pseudo_id, _Raw) for every record of the file, whatever its format.

    JSON Lines are streamed; a JSON list and a COCO file are one document each, read whole.
    """
    first = first_byte(path)
    if not first:
        return
    if first == b"[":
        yield from _json_list_records(path)
        return
    entries = read_json_lines(path)
    head = next(entries, None)
    if head is None:  # nothing but whitespace JSON does not count as such (e.g. form feeds)
        return
    if head.error is None:
        # one JSON value on the first line: COCO (the official file is one line) when nothing
        # follows it, JSON Lines otherwise
        rest = next(entries, None)
        if rest is None and _is_coco(head.value):
            yield from _coco_records(head.value, has_undecodable=False)
            return
        yield from _jsonl_records(itertools.chain([head], [] if rest is None else [rest], entries))
        return
    # The first line is no JSON value by itself: a document over several lines (a pretty-printed
    # COCO file), or JSON Lines whose first line is broken.
    try:
        document = read_json_document(path)
    except json.JSONDecodeError as e:
        if not any(isinstance(entry.value, dict) for entry in read_json_lines(path)):
            raise CaptionFileError(
                f"{path}: cannot parse as JSON or JSON Lines ({e.msg}: line {e.lineno}, column "
                f"{e.colno}, char {e.pos} of {len(e.doc)})"
            ) from None
        yield from _jsonl_records(read_json_lines(path))
        return
    if _is_coco(document.value):
        yield from _coco_records(document.value, has_undecodable=document.has_undecodable)
        return
    raise CaptionFileError(
        f"{path}: a JSON object that is neither a COCO captions file (no 'images' and "
        f"'annotations') nor JSON Lines (one record per line)"
    )


def _is_coco(value) -> bool:
    return isinstance(value, dict) and "annotations" in value and "images" in value


def _json_list_records(path: Path):
    try:
        document = read_json_document(path)
    except json.JSONDecodeError as e:
        raise CaptionFileError(
            f"{path}: truncated or invalid JSON list ({e.msg}: line {e.lineno}, column {e.colno}, "
            f"char {e.pos} of {len(e.doc)}); a JSON list cannot be salvaged, fix or regenerate it"
        ) from None
    if not isinstance(document.value, list):
        raise CaptionFileError(f"{path}: expected a JSON list, found {type(document.value).__name__}")
    for index, obj in enumerate(document.value):
        field = undecodable_field(obj) if document.has_undecodable else None
        raw = _from_object(obj) if field is None else _Raw(error=_not_utf8_field(field))
        yield f"index {index}", f"index:{index}", raw


def _not_utf8_field(field: str) -> str:
    return f"field {field!r} is not UTF-8 text" if field else "not UTF-8 text"


def _jsonl_records(entries):
    for number, value, error in entries:  # unpacked: a third of the cost of reading three fields
        raw = _Raw(unreadable=error) if error else _from_object(value)
        yield f"line {number}", f"line:{number}", raw


def _from_object(obj) -> _Raw:
    if not isinstance(obj, dict):
        return _Raw(error=f"not a JSON object but {type(obj).__name__}")
    caption = None
    for key in CAPTION_KEYS:
        if key in obj:
            caption = obj[key]
            break
    return _Raw(obj.get("image"), caption, obj.get("id"), "id" in obj)


def _coco_records(doc: dict, *, has_undecodable: bool):
    images = doc.get("images") or []
    annotations = doc.get("annotations") or []
    file_names: dict = {}
    for entry in images:
        if isinstance(entry, dict) and "id" in entry and "file_name" in entry:
            file_names.setdefault(entry["id"], entry["file_name"])
    for index, ann in enumerate(annotations):
        where, pseudo = f"annotation {index}", f"annotation:{index}"
        if not isinstance(ann, dict):
            yield where, pseudo, _Raw(error=f"not a JSON object but {type(ann).__name__}")
            continue
        image_id = ann.get("image_id")
        image = file_names.get(image_id) if _hashable(image_id) else None
        error = None if image is not None else f"image_id {image_id!r} has no entry in images[]"
        if has_undecodable:
            field = undecodable_field(ann)
            if field is None and undecodable_field(image) is not None:
                field = f"images[].file_name of image_id {image_id!r}"
            if field == "id":  # an id that cannot be written cannot name the reject either
                yield where, pseudo, _Raw(error=_not_utf8_field(field))
                continue
            if field is not None:
                error = _not_utf8_field(field)
        yield where, pseudo, _Raw(image, ann.get("caption"), ann.get("id"), "id" in ann, error)


def _hashable(value) -> bool:
    return isinstance(value, (str, int, float)) or value is None


# --- checks --------------------------------------------------------------------------------------


@dataclass
class _RecordBuilder:
    images: "_ImagePathChecker"
    kept: list = field(default_factory=list)
    rejects: list = field(default_factory=list)
    input_ids: list = field(default_factory=list)
    first_seen: dict = field(default_factory=dict)

    def add(self, where: str, pseudo_id: str, raw: _Raw) -> None:
        if raw.unreadable:
            self.rejects.append((pseudo_id, raw.unreadable))
            self.input_ids.append(pseudo_id)
            return
        rid, problem = self._check(where, raw)
        if problem is None:
            self.kept.append(rid)
            self.input_ids.append(rid[0])
            return
        reject_id = rid if isinstance(rid, str) else pseudo_id
        label = where if reject_id == pseudo_id else f"{where} (id {reject_id!r})"
        self.rejects.append((reject_id, f"{label}: {problem}"))
        self.input_ids.append(reject_id)

    def _check(self, where: str, raw: _Raw):
        """Return (kept row, None) or (id to reject under, or None for the pseudo id; problem).

        Ids are claimed in file order by the first record that carries them, whether or not
        that record is kept; later records with the same id are rejected under their pseudo id.
        """
        rid = None
        if raw.has_id:
            explicit = raw.explicit_id
            if isinstance(explicit, bool) or not isinstance(explicit, (str, int)):
                return None, f"id must be a string or integer, found {explicit!r}"
            rid = str(explicit)
            if not rid.strip():
                return None, "empty id"
            if _PSEUDO_ID.match(rid):
                return None, f"id {rid!r} has the reserved form of a pseudo id"
            problem = self._claim(rid, where)
            if problem:
                return None, problem
        if raw.error:
            return rid, raw.error
        if not isinstance(raw.image, str) or not raw.image.strip():
            return rid, f"missing or non-string image field ({raw.image!r})"
        if not isinstance(raw.caption, str):
            return rid, f"missing or non-string caption field ({raw.caption!r})"
        caption = normalize_caption(raw.caption)
        image, image_id, path_problem = self.images.check(raw.image)
        if rid is None:
            rid = record_id(image, caption)
            problem = self._claim(rid, where)
            if problem:
                return None, problem
        if not caption:
            return rid, "empty caption"
        if path_problem:
            return rid, path_problem
        return (rid, image, image_id, caption), None

    def _claim(self, rid: str, where: str) -> str | None:
        first = self.first_seen.get(rid)
        if first is not None:
            return f"duplicate id {rid!r} (first at {first})"
        self.first_seen[rid] = where
        return None


class _ImagePathChecker:
    """Checks an image path against the image root, each distinct path once.

    A path must be relative, stay inside the root after resolving '..' and symlinks, and name an
    existing regular file. Directories are resolved once each and files take one lstat, so a
    large caption file costs about one system call per distinct image.
    """

    def __init__(self, image_root: str | os.PathLike):
        self.root = os.path.abspath(image_root)
        self.root_real = os.path.realpath(self.root)
        self._verdicts: dict[str, tuple[str, str, str | None]] = {}
        self._dirs: dict[str, str] = {}

    def check(self, image: str) -> tuple[str, str, str | None]:
        """(normalised relative path, image_id, problem or None)."""
        verdict = self._verdicts.get(image)
        if verdict is None:
            normalized, problem = self._check(image)
            verdict = (normalized, posixpath.splitext(normalized)[0], problem)
            self._verdicts[image] = verdict
        return verdict

    def _inside(self, real: str) -> bool:
        return real == self.root_real or real.startswith(self.root_real.rstrip(os.sep) + os.sep)

    def _check(self, image: str) -> tuple[str, str | None]:
        if _ABSOLUTE.match(image):
            return image, f"absolute image path {image!r} (must be relative to the image root)"
        normalized = posixpath.normpath(image)
        if normalized == ".." or normalized.startswith("../"):
            return normalized, f"image path {image!r} escapes the image root"
        if normalized == ".":
            return normalized, f"image path {image!r} names the image root itself"
        directory, name = posixpath.split(normalized)
        real_dir = self._dirs.get(directory)
        if real_dir is None:
            real_dir = self._dirs[directory] = os.path.realpath(os.path.join(self.root, directory))
        if not self._inside(real_dir):
            return normalized, (
                f"image path {image!r} escapes the image root through a symlink "
                f"(its folder resolves to {real_dir})"
            )
        full = os.path.join(real_dir, name)
        try:
            mode = os.lstat(full).st_mode
        except FileNotFoundError:
            return normalized, f"missing image file {normalized!r}"
        except OSError as e:
            return normalized, f"cannot stat image file {normalized!r}: {e.strerror}"
        if stat.S_ISLNK(mode):
            target = os.path.realpath(full)
            if not self._inside(target):
                return normalized, (
                    f"image path {image!r} escapes the image root through a symlink "
                    f"(resolves to {target})"
                )
            try:
                mode = os.stat(target).st_mode
            except OSError:
                return normalized, f"missing image file {normalized!r} (dangling symlink)"
        if not stat.S_ISREG(mode):
            return normalized, f"image path {normalized!r} is not a regular file"
        return normalized, None


# --- shards --------------------------------------------------------------------------------------


def assign_shards(image_ids: pd.Series, n_shards: int) -> pd.Series:
    """Shard number per row, stable across runs and machines; all rows of one image share a shard."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    distinct = pd.unique(image_ids)
    shard_of = {
        value: int.from_bytes(hashlib.sha1(str(value).encode("utf-8")).digest()[:8], "big") % n_shards
        for value in distinct
    }
    return image_ids.map(shard_of).astype("int64")


# --- stage 2: images -----------------------------------------------------------------------------


def check_images(
    captions_df: pd.DataFrame, image_root: str | os.PathLike, *, workers: int = 4
) -> StageResult:
    """Decode each distinct image once; add width, height, image_mode; reject unusable images' captions.

    image_mode is the mode the file has on disk (e.g. CMYK, L, I;16), read from its header; the
    pixels are checked by a full decode through load_rgb, which converts such modes to RGB.
    Decoding runs in `workers` threads (PIL releases the GIL while decoding).
    """
    root = Path(image_root)
    distinct = list(pd.unique(captions_df["image"])) if len(captions_df) else []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = dict(zip(distinct, pool.map(lambda image: _probe_image(root / image), distinct)))

    ok = captions_df["image"].map(lambda image: isinstance(outcomes[image], tuple)).astype(bool)
    kept = captions_df[ok].copy()
    info = kept["image"].map(outcomes)
    kept["width"] = info.map(lambda t: t[0]).astype("int64")
    kept["height"] = info.map(lambda t: t[1]).astype("int64")
    kept["image_mode"] = info.map(lambda t: t[2]).astype(str)
    bad = captions_df[~ok]
    rejects = rejects_frame(
        IMAGES_STAGE,
        ((cid, f"caption {cid}: {outcomes[image]}") for cid, image in zip(bad["id"], bad["image"])),
    )
    return StageResult(kept=kept.reset_index(drop=True), rejects=rejects)


def _probe_image(path: Path) -> tuple[int, int, str] | str:
    """(width, height, original mode) of a usable image, else the reason it is unusable."""
    try:
        rgb = load_rgb(path)
        with Image.open(path) as im:
            mode = im.mode
    except ImageError as e:
        return str(e)
    except (OSError, Image.DecompressionBombError) as e:  # load_rgb lets these through
        return f"unreadable image {path}: {e}"
    return rgb.width, rgb.height, mode
