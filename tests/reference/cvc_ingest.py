"""CVC's caption reading as it was before `groundflow.io.lines` (commit 88df119): the whole file
read into one string (`read_text`, utf-8-sig), the format told by decoding from its start, and
JSON Lines split out of that string. Kept as the baseline `bench/ingest_speed.py` times the
streamed reader against; the record checks are today's (`_RecordBuilder`), so only the reading
differs. A byte that is not UTF-8 anywhere stops it with UnicodeDecodeError, as it stopped
`cvc_ingest`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from groundflow.cvc.ingest import (
    INGEST_STAGE,
    KEPT_COLUMNS,
    CaptionFileError,
    _coco_records,
    _from_object,
    _ImagePathChecker,
    _Raw,
    _RecordBuilder,
)
from groundflow.io.stage import StageResult, rejects_frame


def ingest_captions_whole_file(path: str | os.PathLike, image_root: str | os.PathLike):
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    builder = _RecordBuilder(_ImagePathChecker(image_root))
    for where, pseudo_id, raw in _raw_records(path, text):
        builder.add(where, pseudo_id, raw)
    kept = pd.DataFrame(builder.kept, columns=KEPT_COLUMNS).astype(str)
    return StageResult(kept=kept, rejects=rejects_frame(INGEST_STAGE, builder.rejects)), builder.input_ids


def _raw_records(path: Path, text: str):
    stripped = text.lstrip()
    if not stripped:
        return
    if stripped[0] == "[":
        records = json.loads(text)
        for index, obj in enumerate(records):
            yield f"index {index}", f"index:{index}", _from_object(obj)
        return
    decoder = json.JSONDecoder()
    start = len(text) - len(stripped)
    try:
        first, end = decoder.raw_decode(text, start)
    except json.JSONDecodeError:
        first, end = None, None
    if end is not None and not text[end:].strip():
        if isinstance(first, dict) and "annotations" in first and "images" in first:
            yield from _coco_records(first, has_undecodable=False)
            return
        if sum(1 for line in text.splitlines() if line.strip()) > 1:
            raise CaptionFileError(f"{path}: neither COCO nor JSON Lines")
    yield from _jsonl_records(text)


def _jsonl_records(text: str):
    loads = json.loads
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            raw = _from_object(loads(line))
        except json.JSONDecodeError as e:
            raw = _Raw(error=f"invalid JSON ({e.msg} at column {e.colno}; truncated line?)")
        yield f"line {number}", f"line:{number}", raw
