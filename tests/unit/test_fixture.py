"""The bundled demo fixture: deterministic bytes, sensible captions, and every bad case caught."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from groundflow.cvc.fixture import KINDS, NO_ENTITY_CAPTION, make_coco_manifest, make_fixture
from groundflow.cvc.ingest import check_images, ingest_captions
from groundflow.io import check_accounting


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixture")
    return out, make_fixture(out, seed=0)


def test_same_seed_same_bytes(tmp_path, fixture_dir):
    out, summary = fixture_dir
    again = make_fixture(tmp_path / "again", seed=0)
    assert _hashes(out) == _hashes(tmp_path / "again")
    assert {k: v for k, v in again.items() if k not in ("captions", "image_root")} == {
        k: v for k, v in summary.items() if k not in ("captions", "image_root")
    }
    other = make_fixture(tmp_path / "other", seed=1)
    assert (tmp_path / "other" / "captions.jsonl").read_bytes() != (out / "captions.jsonl").read_bytes()
    assert other["n_records"] > 0
    # no stray temporary files from the atomic writes
    assert not [p for p in out.rglob(".*")]


def test_layout_and_captions(fixture_dir):
    out, summary = fixture_dir
    images = sorted((out / "images").iterdir())
    assert summary["n_images"] == len(images) == 24 + 4
    assert (out / "outside.png").is_file()
    scenes = [p for p in images if p.name.startswith("scene_")]
    assert len(scenes) == 24
    for path in scenes:
        with Image.open(path) as im:
            assert im.size == (320, 240) and im.mode == "RGB"
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()
               if line.startswith("{") and line.endswith("}")]
    per_image: dict[str, list[str]] = {}
    for record in records:
        if record["image"].startswith("scene_") and record["text_input"].strip():
            per_image.setdefault(record["image"], []).append(record["text_input"])
    assert len(per_image) == 24
    nouns = set(KINDS) | {plural for plural, *_ in KINDS.values()}
    for image, captions in per_image.items():
        originals = [c for c in captions if c not in ("a duplicate caption record", NO_ENTITY_CAPTION)]
        assert 2 <= len(originals) <= 5, image
        assert len(set(originals)) == len(originals)
        for caption in originals:
            mentioned = nouns & set(caption.lower().split())
            assert len(mentioned) >= 2, caption
    assert any("id" in r for r in records) and any("id" not in r for r in records)
    assert any(r["text_input"].lower().startswith("two ") or " two " in r["text_input"] for r in records)


def test_every_bad_case_has_its_expected_outcome(fixture_dir):
    out, summary = fixture_dir
    ingested, input_ids = ingest_captions(summary["captions"], summary["image_root"])
    assert check_accounting("ingest", input_ids, ingested) == {
        "stage": "ingest", "in": summary["n_records"], "out": summary["n_ingest_kept"],
        "rejected": summary["n_records"] - summary["n_ingest_kept"],
    }
    checked = check_images(ingested.kept, summary["image_root"])
    assert check_accounting("images", ingested.kept["id"], checked)["out"] == summary["n_images_kept"]

    rejects = {"ingest": dict(zip(ingested.rejects["id"], ingested.rejects["reason"])),
               "images": dict(zip(checked.rejects["id"], checked.rejects["reason"]))}
    cases = {case["case"]: case for case in summary["bad_cases"]}
    assert set(cases) == {
        "truncated_image", "missing_image", "cmyk_jpeg", "greyscale_png", "grey16_png",
        "empty_caption", "truncated_json_line", "duplicate_id", "path_escape",
    }
    # the bad cases are the only rejects, and each is rejected where and why it should be
    assert len(rejects["ingest"]) + len(rejects["images"]) == sum(c["expect"] == "reject" for c in cases.values())
    for case in cases.values():
        if case["expect"] == "reject":
            reason = rejects[case["stage"]][case["id"]]
            assert case["reason"] in reason, (case, reason)
            where = f"line {case['line']}" if case["stage"] == "ingest" else f"caption {case['id']}"
            assert reason.startswith(where), (case, reason)
        else:
            row = checked.kept.set_index("id").loc[case["id"]]
            assert row["image_mode"] == case["image_mode"]
            assert (row["width"], row["height"]) == (320, 240)
    assert cases["duplicate_id"]["id"] == f"line:{cases['duplicate_id']['line']}"
    assert "first at line" in rejects["ingest"][cases["duplicate_id"]["id"]]
    assert "truncated" in rejects["images"][cases["truncated_image"]["id"]]


def test_without_bad_inputs_everything_is_kept(tmp_path):
    summary = make_fixture(tmp_path, seed=3, n_images=4, include_bad=False)
    ingested, input_ids = ingest_captions(summary["captions"], summary["image_root"])
    checked = check_images(ingested.kept, summary["image_root"])
    assert summary["bad_cases"] == [] and summary["n_images"] == 4
    assert ingested.rejects.empty and checked.rejects.empty
    assert len(checked.kept) == summary["n_records"] == summary["n_images_kept"]
    assert set(checked.kept["image_mode"]) == {"RGB"}


def test_coco_manifest(tmp_path):
    path = tmp_path / "captions_train2014.json"
    info = make_coco_manifest(30, 5, path)
    assert info == {"path": str(path), "n_images": 30, "n_captions": 150}
    doc = json.loads(path.read_text())
    assert set(doc) >= {"info", "images", "annotations"}
    assert doc["images"][0] == {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 320, "height": 240}
    annotations = doc["annotations"]
    assert len({a["id"] for a in annotations}) == 150
    assert [a["image_id"] for a in annotations[:6]] == [1, 1, 1, 1, 1, 2]
    assert make_coco_manifest(30, 5, tmp_path / "again.json") and \
        (tmp_path / "again.json").read_bytes() == path.read_bytes()
    # ingest reads the layout: annotation ids as record ids, file_name as image
    (tmp_path / "train2014").mkdir()
    for entry in doc["images"][:2]:
        (tmp_path / "train2014" / entry["file_name"]).write_bytes(b"")
    result, ids = ingest_captions(path, tmp_path / "train2014")
    check_accounting("ingest", ids, result)
    assert list(result.kept["id"]) == [str(i) for i in range(1, 11)]
    assert result.kept["image_id"].iloc[0] == "COCO_train2014_000000000001"
    assert len(result.rejects) == 140
    assert result.rejects["reason"].iloc[0] == (
        "annotation 10 (id '11'): missing image file 'COCO_train2014_000000000003.jpg'"
    )
