"""Caption ingest (all three input formats, every reject reason), sharding, and the image check."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from groundflow.cvc import ingest as ingest_module
from groundflow.cvc.ingest import (
    CaptionFileError,
    assign_shards,
    check_images,
    ingest_captions,
    record_id,
)
from groundflow.io import check_accounting


def _sha_id(stem: str, image: str, caption: str) -> str:
    digest = hashlib.sha1(image.encode() + b"\0" + caption.encode()).hexdigest()
    return f"{stem}-{digest[:10]}"


def _png(path, colour=(10, 20, 30), size=(6, 4), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


@pytest.fixture
def root(tmp_path):
    """An image root with a.png, b.png, sub/c.png, and outside.png beside (not in) the root."""
    image_root = tmp_path / "images"
    _png(image_root / "a.png")
    _png(image_root / "b.png", size=(5, 3))
    _png(image_root / "sub" / "c.png")
    _png(tmp_path / "outside.png")
    return image_root


def _jsonl(tmp_path, lines):
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return path


def _ingest(path, root):
    result, ids = ingest_captions(path, root)
    counts = check_accounting("ingest", ids, result)
    return result, ids, counts


def _reasons(result) -> dict[str, str]:
    return dict(zip(result.rejects["id"], result.rejects["reason"]))


def test_jsonl_ids_captions_and_columns(tmp_path, root):
    path = _jsonl(tmp_path, [
        {"image": "a.png", "text_input": "  a   red\n ball \t"},
        {"image": "sub/c.png", "text_input": "a cup", "id": "cap-7"},
        {"image": "sub/../b.png", "text_input": "a kite", "id": 42},
    ])
    result, ids, counts = _ingest(path, root)
    assert counts == {"stage": "ingest", "in": 3, "out": 3, "rejected": 0}
    kept = result.kept
    assert list(kept.columns) == ["id", "image", "image_id", "caption"]
    assert kept.to_dict("records") == [
        {"id": _sha_id("a", "a.png", "a red ball"), "image": "a.png", "image_id": "a", "caption": "a red ball"},
        {"id": "cap-7", "image": "sub/c.png", "image_id": "sub/c", "caption": "a cup"},
        {"id": "42", "image": "b.png", "image_id": "b", "caption": "a kite"},
    ]
    assert ids == list(kept["id"])
    assert record_id("sub/c.png", "x") == _sha_id("c", "sub/c.png", "x")


def test_json_list_format(tmp_path, root):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps([
        {"image": "a.png", "text_input": "a ball"},
        "not a record",
        {"image": "b.png"},
        {"image": "b.png", "text_input": "a tree", "id": "t1"},
    ], indent=2))
    result, ids, counts = _ingest(path, root)
    assert counts == {"stage": "ingest", "in": 4, "out": 2, "rejected": 2}
    assert list(result.kept["id"]) == [_sha_id("a", "a.png", "a ball"), "t1"]
    assert _reasons(result) == {
        "index:1": "index 1: not a JSON object but str",
        "index:2": "index 2: missing or non-string caption field (None)",
    }


def test_truncated_json_list_raises_naming_file_and_position(tmp_path, root):
    path = tmp_path / "captions.json"
    full = json.dumps([{"image": "a.png", "text_input": "a ball"}] * 3)
    path.write_text(full[: len(full) - 20])
    with pytest.raises(CaptionFileError) as error:
        ingest_captions(path, root)
    message = str(error.value)
    assert str(path) in message and "truncated or invalid JSON list" in message
    assert "(Unterminated string starting at: line 1, column 109, char 108 of 112)" in message


def test_truncated_coco_document_raises(tmp_path, root):
    path = tmp_path / "captions_train2014.json"
    doc = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]}
    text = json.dumps(doc, indent=2)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(CaptionFileError, match="cannot parse as JSON or JSON Lines"):
        ingest_captions(path, root)


def test_coco_layout(tmp_path, root):
    path = tmp_path / "captions_train2014.json"
    path.write_text(json.dumps({
        "info": {},
        "images": [{"id": 10, "file_name": "a.png"}, {"id": 11, "file_name": "sub/c.png"}],
        "annotations": [
            {"id": 100, "image_id": 10, "caption": "A dog  on a sofa. "},
            {"id": 101, "image_id": 11, "caption": "a cat"},
            {"id": 102, "image_id": 99, "caption": "an orphan"},
            {"id": 100, "image_id": 11, "caption": "same id again"},
            {"image_id": 10, "caption": "no id"},
        ],
    }))
    result, ids, counts = _ingest(path, root)
    assert counts == {"stage": "ingest", "in": 5, "out": 3, "rejected": 2}
    assert result.kept.to_dict("records") == [
        {"id": "100", "image": "a.png", "image_id": "a", "caption": "A dog on a sofa."},
        {"id": "101", "image": "sub/c.png", "image_id": "sub/c", "caption": "a cat"},
        {"id": _sha_id("a", "a.png", "no id"), "image": "a.png", "image_id": "a", "caption": "no id"},
    ]
    assert _reasons(result) == {
        "102": "annotation 2 (id '102'): image_id 99 has no entry in images[]",
        "annotation:3": "annotation 3: duplicate id '100' (first at annotation 0)",
    }


def test_truncated_jsonl_line_bad_fields_and_blank_lines(tmp_path, root):
    good = json.dumps({"image": "a.png", "text_input": "a ball"})
    path = _jsonl(tmp_path, [
        good,
        good[:15],
        "",
        {"text_input": "no image"},
        {"image": "b.png", "text_input": 5, "id": "n5"},
        {"image": "b.png", "text_input": "bool id", "id": True},
        {"image": "b.png", "text_input": "reserved", "id": "line:1"},
        [1, 2],
        {"image": "b.png", "text_input": "fine"},
    ])
    result, ids, counts = _ingest(path, root)
    assert counts == {"stage": "ingest", "in": 8, "out": 2, "rejected": 6}
    assert ids[:2] == [_sha_id("a", "a.png", "a ball"), "line:2"]
    reasons = _reasons(result)
    assert reasons["line:2"].startswith("line 2 is not valid JSON (")
    assert reasons["line:4"] == "line 4: missing or non-string image field (None)"
    assert reasons["n5"] == "line 5 (id 'n5'): missing or non-string caption field (5)"
    assert reasons["line:6"] == "line 6: id must be a string or integer, found True"
    assert reasons["line:7"] == "line 7: id 'line:1' has the reserved form of a pseudo id"
    assert reasons["line:8"] == "line 8: not a JSON object but list"


def test_empty_caption_and_duplicates(tmp_path, root):
    path = _jsonl(tmp_path, [
        {"image": "a.png", "text_input": "a ball", "id": "x"},
        {"image": "a.png", "text_input": " \n\t "},
        {"image": "b.png", "text_input": "a tree", "id": "x"},
        {"image": "b.png", "text_input": "a  tree"},
        {"image": "b.png", "text_input": " a tree "},
        {"image": "b.png", "text_input": "another", "id": "x"},
    ])
    result, ids, counts = _ingest(path, root)
    assert counts == {"stage": "ingest", "in": 6, "out": 2, "rejected": 4}
    tree_id = _sha_id("b", "b.png", "a tree")
    assert list(result.kept["id"]) == ["x", tree_id]
    assert _reasons(result) == {
        _sha_id("a", "a.png", ""): f"line 2 (id '{_sha_id('a', 'a.png', '')}'): empty caption",
        "line:3": "line 3: duplicate id 'x' (first at line 1)",
        "line:5": f"line 5: duplicate id '{tree_id}' (first at line 4)",
        "line:6": "line 6: duplicate id 'x' (first at line 1)",
    }


def test_path_escape_absolute_and_missing(tmp_path, root):
    absolute = str(root / "a.png")  # exists and lies inside the root, but is absolute
    path = _jsonl(tmp_path, [
        {"image": "../outside.png", "text_input": "t", "id": "up"},
        {"image": "sub/../../outside.png", "text_input": "t", "id": "up2"},
        {"image": absolute, "text_input": "t", "id": "abs"},
        {"image": "C:\\images\\a.png", "text_input": "t", "id": "win"},
        {"image": "nope.png", "text_input": "t", "id": "missing"},
        {"image": "sub", "text_input": "t", "id": "dir"},
        {"image": "a.png", "text_input": "t", "id": "ok"},
    ])
    result, ids, counts = _ingest(path, root)
    assert counts == {"stage": "ingest", "in": 7, "out": 1, "rejected": 6}
    assert _reasons(result) == {
        "up": "line 1 (id 'up'): image path '../outside.png' escapes the image root",
        "up2": "line 2 (id 'up2'): image path 'sub/../../outside.png' escapes the image root",
        "abs": f"line 3 (id 'abs'): absolute image path {absolute!r} (must be relative to the image root)",
        "win": "line 4 (id 'win'): absolute image path 'C:\\\\images\\\\a.png' (must be relative to the image root)",
        "missing": "line 5 (id 'missing'): missing image file 'nope.png'",
        "dir": "line 6 (id 'dir'): image path 'sub' is not a regular file",
    }


def test_symlinks(tmp_path, root):
    os.symlink(tmp_path / "outside.png", root / "link_out.png")
    os.symlink(tmp_path, root / "dir_out")
    os.symlink(root / "a.png", root / "sub" / "link_in.png")
    os.symlink(root / "gone.png", root / "dangling.png")
    path = _jsonl(tmp_path, [
        {"image": "link_out.png", "text_input": "t", "id": "file-link"},
        {"image": "dir_out/outside.png", "text_input": "t", "id": "dir-link"},
        {"image": "sub/link_in.png", "text_input": "t", "id": "inside-link"},
        {"image": "dangling.png", "text_input": "t", "id": "dangling"},
    ])
    result, ids, counts = _ingest(path, root)
    assert counts == {"stage": "ingest", "in": 4, "out": 1, "rejected": 3}
    assert list(result.kept["image"]) == ["sub/link_in.png"]
    reasons = _reasons(result)
    real_outside = os.path.realpath(tmp_path / "outside.png")
    assert reasons["file-link"] == (
        f"line 1 (id 'file-link'): image path 'link_out.png' escapes the image root through a "
        f"symlink (resolves to {real_outside})"
    )
    assert "escapes the image root through a symlink (its folder resolves to" in reasons["dir-link"]
    assert reasons["dangling"] == "line 4 (id 'dangling'): missing image file 'dangling.png' (dangling symlink)"


def test_image_root_itself_a_symlink(tmp_path, root):
    linked_root = tmp_path / "root_link"
    os.symlink(root, linked_root)
    path = _jsonl(tmp_path, [{"image": "a.png", "text_input": "t"}, {"image": "../outside.png", "text_input": "t"}])
    result, _, counts = _ingest(path, linked_root)
    assert counts["out"] == 1 and list(result.kept["image"]) == ["a.png"]


def test_each_distinct_image_is_statted_once(tmp_path, root, monkeypatch):
    calls = []
    real_lstat = os.lstat
    monkeypatch.setattr(ingest_module.os, "lstat", lambda p: calls.append(p) or real_lstat(p))
    path = _jsonl(tmp_path, [{"image": "a.png", "text_input": f"caption {i}"} for i in range(50)])
    result, _, counts = _ingest(path, root)
    assert counts["out"] == 50
    assert [p for p in calls if str(p).endswith("a.png")] == [os.path.realpath(root / "a.png")]


def test_empty_file(tmp_path, root):
    path = tmp_path / "captions.jsonl"
    path.write_text("\n\n")
    result, ids, _ = _ingest(path, root)
    assert ids == [] and result.kept.empty and list(result.kept.columns) == ["id", "image", "image_id", "caption"]


def test_assign_shards_stable_and_grouped():
    image_ids = pd.Series(["a", "b", "a", "COCO_train2014_000000000009", "b"], index=[5, 6, 7, 8, 9])
    shards = assign_shards(image_ids, 4)

    def expected(value):
        return int.from_bytes(hashlib.sha1(value.encode()).digest()[:8], "big") % 4

    assert shards.tolist() == [expected(v) for v in image_ids]
    assert list(shards.index) == [5, 6, 7, 8, 9]
    assert shards[5] == shards[7] and shards[6] == shards[9]
    assert shards.dtype == "int64"
    assert (assign_shards(image_ids, 1) == 0).all()
    many = assign_shards(pd.Series([f"img{i}" for i in range(4000)]), 8)
    assert many.min() == 0 and many.max() == 7 and many.value_counts().min() > 400
    with pytest.raises(ValueError):
        assign_shards(image_ids, 0)


# --- check_images --------------------------------------------------------------------------------


def test_check_images_decodes_each_image_once_and_rejects_every_caption(tmp_path, root, monkeypatch):
    (root / "broken.png").write_bytes(b"not an image at all")
    grey = np.array([[0, 128, 255]], dtype=np.uint8)
    Image.fromarray(grey).save(root / "grey.png")
    captions = pd.DataFrame({
        "id": ["c1", "c2", "c3", "c4", "c5", "c6"],
        "image": ["a.png", "b.png", "a.png", "broken.png", "broken.png", "grey.png"],
        "image_id": ["a", "b", "a", "broken", "broken", "grey"],
        "caption": ["x"] * 6,
        "extra": [1, 2, 3, 4, 5, 6],
    })
    decoded = []
    real_load = ingest_module.load_rgb
    monkeypatch.setattr(ingest_module, "load_rgb", lambda p: decoded.append(p.name) or real_load(p))
    result = check_images(captions, root, workers=2)
    assert check_accounting("images", captions["id"], result)["out"] == 4
    assert sorted(decoded) == ["a.png", "b.png", "broken.png", "grey.png"]
    kept = result.kept
    assert list(kept.columns) == ["id", "image", "image_id", "caption", "extra", "width", "height", "image_mode"]
    assert kept[["id", "width", "height", "image_mode", "extra"]].to_dict("records") == [
        {"id": "c1", "width": 6, "height": 4, "image_mode": "RGB", "extra": 1},
        {"id": "c2", "width": 5, "height": 3, "image_mode": "RGB", "extra": 2},
        {"id": "c3", "width": 6, "height": 4, "image_mode": "RGB", "extra": 3},
        {"id": "c6", "width": 3, "height": 1, "image_mode": "L", "extra": 6},
    ]
    assert kept["width"].dtype == "int64"
    broken = root / "broken.png"
    assert _reasons(result) == {
        "c4": f"caption c4: unreadable image {broken}: not a recognised image format",
        "c5": f"caption c5: unreadable image {broken}: not a recognised image format",
    }
    assert set(result.rejects["stage"]) == {"images"}


def test_check_images_empty_input(root):
    empty = pd.DataFrame({"id": [], "image": [], "image_id": [], "caption": []}, dtype=str)
    result = check_images(empty, root)
    assert result.kept.empty and result.rejects.empty
    assert {"width", "height", "image_mode"} <= set(result.kept.columns)


def test_format_detection_edge_cases(tmp_path, root):
    bom = tmp_path / "bom.jsonl"
    bom.write_text("\ufeff" + json.dumps({"image": "a.png", "text_input": "a ball"}) + "\n", encoding="utf-8")
    result, _, counts = _ingest(bom, root)
    assert counts["out"] == 1 and list(result.kept["caption"]) == ["a ball"]

    broken_first = _jsonl(tmp_path, ['{"image": "a.png", "text_in', {"image": "b.png", "text_input": "b"}])
    result, ids, counts = _ingest(broken_first, root)
    assert ids[0] == "line:1" and counts["out"] == 1

    pretty_record = tmp_path / "pretty.json"
    pretty_record.write_text(json.dumps({"image": "a.png", "text_input": "a ball"}, indent=2))
    with pytest.raises(CaptionFileError, match="neither a COCO captions file"):
        ingest_captions(pretty_record, root)
