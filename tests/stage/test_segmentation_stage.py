"""Segmentation (tiny random SAM, real segment_anything classes) and occlusion, end to end."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

import groundflow.models.sam as sam_module
import groundflow.pipeline as pipeline_module
import groundflow.vision.segmentation as segmentation_module
from groundflow.io import check_accounting, read_table, write_table
from groundflow.io.artifacts import atomic_write_json
from groundflow.models.sam import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    build_tiny_sam,
    checkpoint_model_type,
    load_sam,
    sam_from_config,
)
from groundflow.models.spec import ModelSpec
from groundflow.vision.occlusion import IMAGENET_MEAN_RGB, occlude, occlusion_mask, record_rng
from groundflow.vision.segmentation import (
    choose_candidates,
    load_box_masks,
    mask_groups,
    output_file_name,
    save_box_masks,
    segment,
)
from script_harness import FakeSnakemake, run_script, stage_outputs


@pytest.fixture(scope="module")
def tiny_sam_dir(tmp_path_factory):
    return build_tiny_sam(tmp_path_factory.mktemp("models") / "sam-tiny", seed=0)


@pytest.fixture(scope="module")
def sam(tiny_sam_dir):
    return load_sam(ModelSpec(path=str(tiny_sam_dir), device="cpu"))


def _make_image(path, width, height, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (30, 180, 60)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture()
def workspace(tmp_path):
    root = tmp_path / "images"
    _make_image(root / "train" / "COCO_a.jpg", 96, 64, seed=1)
    _make_image(root / "val" / "COCO_b.png", 80, 72, seed=2)
    rows = [
        ("train/COCO_a", "train/COCO_a.jpg", 96, 64, "dog", [[10.0, 8.0, 60.0, 50.0], [50.0, 20, 90, 60]]),
        ("train/COCO_a", "train/COCO_a.jpg", 96, 64, "tennis ball", [[20.0, 16.0, 70.0, 48.0]]),
        ("val/COCO_b", "val/COCO_b.png", 80, 72, "cat", [[5.0, 5.0, 75.0, 70.0]]),
    ]
    df = pd.DataFrame(
        {
            "id": [f"{r[0]}-{r[4]}" for r in rows],
            "image": [r[1] for r in rows],
            "image_id": [r[0] for r in rows],
            "width": [r[2] for r in rows],
            "height": [r[3] for r in rows],
            "label": [r[4] for r in rows],
            "boxes": [r[5] for r in rows],
            "box": [r[5][0] for r in rows],
        }
    )
    # Through Parquet, as between Snakemake jobs: list columns come back as arrays of arrays.
    write_table(df, tmp_path / "grounded.parquet")
    return tmp_path, root, read_table(tmp_path / "grounded.parquet")


def _count_set_image(monkeypatch):
    calls = []
    original = SamPredictor.set_image

    def counting(self, image, image_format="RGB"):
        calls.append(image.shape)
        return original(self, image, image_format)

    monkeypatch.setattr(SamPredictor, "set_image", counting)
    return calls


def _count_box_batches(monkeypatch):
    sizes = []
    original = SamPredictor.predict_torch

    def counting(self, point_coords, point_labels, boxes=None, *args, **kwargs):
        sizes.append(len(boxes))
        return original(self, point_coords, point_labels, boxes, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "predict_torch", counting)
    return sizes


# ------------------------------------------------------------------ model loading


def test_tiny_sam_round_trips_through_the_loader(tiny_sam_dir, sam):
    assert (tiny_sam_dir / CONFIG_NAME).is_file() and (tiny_sam_dir / WEIGHTS_NAME).is_file()
    again = build_tiny_sam(tiny_sam_dir.parent / "again", seed=0)
    reloaded = load_sam(str(again))
    for (name, a), (_, b) in zip(sam.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert type(sam).__module__.startswith("segment_anything")
    assert sam.image_encoder.img_size == 256


def test_official_style_checkpoint_loads_with_weights_only(tmp_path, sam, monkeypatch):
    config = {"image_size": 256}
    # the real registry would build the 90M-parameter ViT-B; the loading path is what is tested
    monkeypatch.setitem(
        sam_module.sam_model_registry, "vit_b", lambda checkpoint=None: sam_from_config(config)
    )
    checkpoint = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), checkpoint)
    loaded = load_sam(str(checkpoint))
    assert torch.equal(loaded.mask_decoder.iou_token.weight, sam.mask_decoder.iou_token.weight)
    # anything but plain tensors is refused by torch.load(weights_only=True)
    hostile = tmp_path / "sam_vit_b_hostile.pth"
    with open(hostile, "wb") as f:
        pickle.dump({"x": pd.Timestamp("2020-01-01")}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_sam(str(hostile))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="neither a folder"):
        load_sam(str(other))


def test_checkpoint_model_type_from_file_name():
    assert checkpoint_model_type("/ckpt/sam_vit_h_4b8939.pth") == "vit_h"
    assert checkpoint_model_type("sam_vit_l_0b3195.pth") == "vit_l"
    assert checkpoint_model_type("SAM-ViT-B.pth") == "vit_b"
    with pytest.raises(ValueError, match="model_type"):
        checkpoint_model_type("sam_huge.pth")


def test_choose_candidates_best_and_first():
    masks = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    masks[0, 1, 0, 0] = True
    masks[1, 2, 1, 1] = True
    iou = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.3, 0.8]])
    best = choose_candidates(masks, iou, "best")
    assert best[0, 0, 0] and best[1, 1, 1] and best.sum() == 2
    assert not choose_candidates(masks, iou, "first").any()


def test_output_file_names_stay_in_their_folder():
    assert output_file_name("train/COCO_1.jpg", "tennis ball", ".png") == "COCO_1-tennis ball.png"
    assert output_file_name("COCO_1.jpg", "AC/DC", ".jpg") == "COCO_1-AC_DC.jpg"
    assert output_file_name("a/.hidden.jpg", "x", ".png") == "_hidden-x.png"


# ------------------------------------------------------------------ segmentation + occlusion


def test_segment_then_occlude(workspace, sam, monkeypatch):
    base, image_root, rows = workspace
    calls = _count_set_image(monkeypatch)
    box_batches = _count_box_batches(monkeypatch)
    mask_dir = base / "work" / "masks"
    result = segment(
        rows, image_root, sam, mask_dir=mask_dir, relative_to=base / "work", min_mask_area=0
    )
    check_accounting("segmentation", rows["id"], result)
    assert len(calls) == 2  # one embedding per image, not per entity or box
    assert sorted(calls) == [(64, 96, 3), (72, 80, 3)]
    assert box_batches == [3, 1]  # all boxes of an image's entities in one decoder call
    kept = result.kept
    assert list(kept["id"]) == list(rows["id"]) and result.rejects.empty
    assert set(rows.columns) < set(kept.columns)
    assert kept["mask_path"].tolist() == [
        "masks/COCO_a-dog.png",
        "masks/COCO_a-tennis ball.png",
        "masks/COCO_b-cat.png",
    ]
    for record in kept.itertuples():
        masks = load_box_masks(base / "work" / record.mask_path, len(record.boxes))
        assert masks.shape == (len(record.boxes), record.height, record.width)
        assert int((masks.any(axis=0)).sum()) == record.mask_area  # the area of the union
        with Image.open(base / "work" / record.mask_path) as im:
            assert im.mode == "1" and im.size == (record.width, len(record.boxes) * record.height)

    # Each box keeps its own mask: one predictor call per box, best candidate each, cut to its
    # box; the dog's two boxes give two different masks, not one union twice.
    predictor = SamPredictor(sam)
    dog = load_box_masks(base / "work" / kept["mask_path"].iloc[0], 2)
    with torch.inference_mode():
        predictor.set_image(np.asarray(Image.open(image_root / "train/COCO_a.jpg").convert("RGB")))
        for k, box in enumerate(rows["boxes"].iloc[0]):
            masks, scores, _ = predictor.predict(box=np.asarray(box), multimask_output=True)
            ys, xs = np.mgrid[0:64, 0:96] + 0.5
            x0, y0, x1, y1 = box
            inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
            assert (dog[k] != (masks[int(np.argmax(scores))] & inside)).mean() < 1e-3
    assert dog[0].any() and dog[1].any() and not np.array_equal(dog[0], dog[1])

    # Boxes split over several decoder calls give the same per-box masks.
    box_batches.clear()
    chunked = segment(
        rows, image_root, sam, mask_dir=base / "chunked", relative_to=base, min_mask_area=0, batch_boxes=1
    )
    assert box_batches == [1, 1, 1, 1]
    for a, b, boxes in zip(kept["mask_path"], chunked.kept["mask_path"], kept["boxes"]):
        np.testing.assert_array_equal(
            load_box_masks(base / "work" / a, len(boxes)), load_box_masks(base / b, len(boxes))
        )

    # min_mask_area: the smallest masks are rejected with the area in the reason, the others kept.
    areas = dict(zip(kept["id"], kept["mask_area"]))
    assert max(areas.values()) > min(areas.values())
    threshold = min(areas.values()) + 1
    strict = segment(
        rows, image_root, sam, mask_dir=base / "strict", relative_to=base, min_mask_area=threshold
    )
    check_accounting("segmentation", rows["id"], strict)
    rejected = {i for i, a in areas.items() if a < threshold}
    assert set(strict.rejects["id"]) == rejected and len(strict.kept) == 3 - len(rejected)
    for reason in strict.rejects["reason"]:
        assert re.fullmatch(rf"mask area \d+ < min {threshold} for '[a-z ]+' in \S+", reason), reason
    assert (strict.rejects["stage"] == "segmentation").all()

    # "first" (the original's choice) gives different masks from "best" on this model
    first = segment(
        rows, image_root, sam, mask_dir=base / "first", relative_to=base, mask_choice="first", min_mask_area=0
    )
    assert first.kept["mask_area"].tolist() != kept["mask_area"].tolist()

    # ---- occlusion of the segmented rows
    out_dir = base / "work" / "occluded"
    occluded = occlude(
        kept, image_root, mask_root=base / "work", out_dir=out_dir, relative_to=base / "work",
        seed=0, min_coverage=0.0,
    )
    check_accounting("occlusion", kept["id"], occluded)
    assert len(occluded.kept) == 3
    assert occluded.kept["occluded_image"].tolist() == [
        "occluded/COCO_a-dog.jpg",
        "occluded/COCO_a-tennis ball.jpg",
        "occluded/COCO_b-cat.jpg",
    ]
    for record in occluded.kept.itertuples():
        box_masks = load_box_masks(base / "work" / record.mask_path, len(record.boxes))
        mask = box_masks.any(axis=0)
        expected = occlusion_mask(box_masks, record.boxes, record_rng(0, record.id))
        assert record.n_patches == expected.n_patches > 0
        assert record.occluded_fraction == pytest.approx((expected.painted & mask).sum() / mask.sum())
        assert 0 < record.occluded_fraction <= 1
        with Image.open(base / "work" / record.occluded_image) as im:
            assert im.format == "JPEG" and im.size == (record.width, record.height)
            pixels = np.asarray(im.convert("RGB")).astype(float)
        # JPEG is lossy: the painted area is the ImageNet mean on average, untouched pixels are not
        painted_mean = pixels[expected.painted].mean(axis=0)
        assert np.abs(painted_mean - IMAGENET_MEAN_RGB).max() < 6

    # Same seed and id -> same result, whatever the order of the rows.
    again = occlude(
        kept.iloc[::-1], image_root, mask_root=base / "work", out_dir=base / "again",
        relative_to=base, seed=0, min_coverage=0.0,
    )
    by_id = again.kept.set_index("id")
    for record in occluded.kept.itertuples():
        assert by_id.loc[record.id, "n_patches"] == record.n_patches
        assert by_id.loc[record.id, "occluded_fraction"] == record.occluded_fraction

    # min_coverage: rows below it are rejected with id and numbers in the reason.
    fractions = dict(zip(occluded.kept["id"], occluded.kept["occluded_fraction"]))
    assert max(fractions.values()) > min(fractions.values())
    cut = sorted(fractions.values())[1]
    strict_occ = occlude(
        kept, image_root, mask_root=base / "work", out_dir=base / "strict-occ", relative_to=base,
        seed=0, min_coverage=cut,
    )
    check_accounting("occlusion", kept["id"], strict_occ)
    low = {i for i, f in fractions.items() if f < cut}
    assert set(strict_occ.rejects["id"]) == low and len(strict_occ.kept) == 3 - len(low)
    for rid, reason in zip(strict_occ.rejects["id"], strict_occ.rejects["reason"]):
        assert reason.startswith(f"occluded fraction {fractions[rid]:.3f} < min {cut} for '{rid}'")
    names = dict(zip(kept["id"], ["COCO_a-dog.jpg", "COCO_a-tennis ball.jpg", "COCO_b-cat.jpg"]))
    for rid, name in names.items():
        assert (base / "strict-occ" / name).exists() == (rid not in low)


def test_occlude_rejects_when_no_patch_lands(workspace):
    base, image_root, rows = workspace
    row = rows.iloc[[2]].copy()
    # one mask pixel off every grid point (box 70x65 -> p = 21, stride 4): no patch can land
    mask = np.zeros((1, 72, 80), dtype=bool)
    mask[0, 1, 1] = True
    save_box_masks(base / "masks" / "speck.png", mask)
    row["mask_path"] = ["masks/speck.png"]
    result = occlude(
        row, image_root, mask_root=base, out_dir=base / "out", relative_to=base, seed=0, min_coverage=0.0
    )
    check_accounting("occlusion", row["id"], result)
    assert result.kept.empty
    assert result.rejects["reason"].tolist() == [
        "no patch landed inside the 1-pixel mask of 'val/COCO_b-cat'"
    ]
    assert not (base / "out" / "COCO_b-cat.jpg").exists()


def test_segment_rejects_missing_images_and_boxless_rows_without_running_sam(workspace, sam, monkeypatch):
    base, image_root, rows = workspace
    calls = _count_set_image(monkeypatch)
    broken = rows.copy()
    broken.loc[0, "image"] = "train/missing.jpg"
    broken.loc[1, "image"] = "train/missing.jpg"
    broken["boxes"] = [[] if i == 2 else b for i, b in enumerate(broken["boxes"])]
    result = segment(broken, image_root, sam, mask_dir=base / "m", relative_to=base, min_mask_area=0)
    check_accounting("segmentation", broken["id"], result)
    assert result.kept.empty and calls == []
    reasons = dict(zip(result.rejects["id"], result.rejects["reason"]))
    assert reasons["train/COCO_a-dog"].startswith("image of 'train/COCO_a-dog': missing image file")
    assert reasons["val/COCO_b-cat"] == "no boxes for 'cat' in val/COCO_b.png"


# ------------------------------------------------------------------ the stage in chunks: kill and resume


def _chunk_workspace(base):
    """Four images and a missing one; COCO_d and COCO_d-red give one mask file name ("COCO_d-red-cup.png")."""
    root = base / "images"
    for seed, name in enumerate(["train/COCO_a.jpg", "val/COCO_b.png", "train/COCO_d.jpg", "val/COCO_d-red.jpg"]):
        _make_image(root / name, 64 + 8 * seed, 56, seed=seed)
    rows = [  # input order keeps the colliding pair apart: grouping must bring them together
        ("train/COCO_d.jpg", "red-cup"), ("train/COCO_a.jpg", "dog"), ("train/COCO_a.jpg", "tennis ball"),
        ("val/COCO_b.png", "cat"), ("val/COCO_d-red.jpg", "cup"), ("train/missing.jpg", "bird"),
    ]
    box = [[8.0, 8.0, 48.0, 44.0]]
    df = pd.DataFrame({
        "id": [f"{image}-{label}" for image, label in rows], "image": [r[0] for r in rows],
        "label": [r[1] for r in rows], "boxes": [box] * len(rows), "box": [box[0]] * len(rows),
    })
    write_table(df, base / "grounded.parquet")
    return root, df


def _segmentation_job(base, records, image_root, tiny_sam_dir, chunk_size=1):
    results = base / "results" / "cvc"
    return FakeSnakemake(
        input={"records": str(records)},
        output={**stage_outputs(results / "segmentation", "0"), "masks": str(results / "masks" / "0")},
        params={"models": {"sam": {"path": str(tiny_sam_dir), "device": "cpu"}},
                "opts": {"mask_choice": "best", "min_mask_area": 0, "batch_boxes": 64, "clip_to_box": True,
                         "chunk_size": chunk_size},
                "image_root": str(image_root), "relative_to": str(results),
                "progress_dir": str(results / ".progress" / "segmentation" / "0")},
        log=[str(base / "logs" / "0.log")],
    )


def _outputs(smk):
    """What the job leaves: its tables' bytes and every file of its mask folder."""
    masks = Path(smk.output.masks)
    return ({key: Path(smk.output[key]).read_bytes() for key in ("kept", "rejects")},
            {p.name: p.read_bytes() for p in sorted(masks.iterdir())})


def _as_snakemake_before_a_rerun(smk):
    """Snakemake deletes an incomplete job's outputs, its mask folder included, before re-running it."""
    shutil.rmtree(smk.output.masks, ignore_errors=True)
    for key in ("kept", "rejects", "counts"):
        Path(smk.output[key]).unlink(missing_ok=True)


def test_mask_groups_join_an_image_and_colliding_file_names(tmp_path):
    _, df = _chunk_workspace(tmp_path)
    assert mask_groups(df) == [0, 1, 1, 3, 0, 5]


def test_segmentation_stage_resumes_its_finished_chunks_masks_included(tmp_path, tiny_sam_dir, monkeypatch):
    image_root, _ = _chunk_workspace(tmp_path)
    records = tmp_path / "grounded.parquet"
    reference = _segmentation_job(tmp_path / "ref", records, image_root, tiny_sam_dir)
    run_script("cvc_segmentation.py", reference)
    expected_tables, expected_masks = _outputs(reference)
    kept = read_table(reference.output.kept)
    # chunks [d, d-red], [a, a], [b], [missing]: the later "COCO_d-red-cup" is rejected in its chunk
    assert list(kept["id"]) == ["train/COCO_d.jpg-red-cup", "train/COCO_a.jpg-dog", "train/COCO_a.jpg-tennis ball",
                                "val/COCO_b.png-cat"]
    assert sorted(expected_masks) == ["COCO_a-dog.png", "COCO_a-tennis ball.png", "COCO_b-cat.png", "COCO_d-red-cup.png"]
    assert sorted(kept["mask_path"]) == [f"masks/0/{name}" for name in sorted(expected_masks)]
    rejects = dict(zip(*(read_table(reference.output.rejects)[c] for c in ("id", "reason"))))
    assert set(rejects) == {"val/COCO_d-red.jpg-cup", "train/missing.jpg-bird"}
    assert "already written for 'train/COCO_d.jpg-red-cup'" in rejects["val/COCO_d-red.jpg-cup"]
    assert not Path(reference.params.progress_dir).exists()

    # Killed in the third chunk while writing its mask, a stray half-written file left behind.
    smk = _segmentation_job(tmp_path / "killed", records, image_root, tiny_sam_dir)
    saves = []

    def killed_in_chunk_3(path, masks):
        if Path(path).name == "COCO_b-cat.png":
            Path(path).write_bytes(b"\x89PNG half")
            raise RuntimeError("killed")
        saves.append(Path(path).name)
        save_box_masks(path, masks)

    monkeypatch.setattr(segmentation_module, "save_box_masks", killed_in_chunk_3)
    with pytest.raises(RuntimeError, match="killed"):
        run_script("cvc_segmentation.py", smk)
    assert saves == ["COCO_d-red-cup.png", "COCO_a-dog.png", "COCO_a-tennis ball.png"]
    monkeypatch.undo()
    _as_snakemake_before_a_rerun(smk)
    run_script("cvc_segmentation.py", smk)
    assert "resumed 2 finished chunks (4 items), computing 2 chunks (2 items)" in Path(smk.log[0]).read_text()
    counts = json.loads(Path(smk.output.counts).read_text())
    assert (counts["chunks"], counts["chunks_reused"], counts["items_recomputed"]) == (4, 2, 2)
    assert _outputs(smk) == (expected_tables, expected_masks)
    assert not Path(smk.params.progress_dir).exists()

    # Killed after the tables and masks are written, before the job ends (its counts file): the
    # re-run, its outputs deleted, reuses every chunk and still has every mask.
    smk = _segmentation_job(tmp_path / "again", records, image_root, tiny_sam_dir)

    def killed_before_the_counts(path, obj):
        if str(path) == smk.output.counts:
            raise RuntimeError("killed")
        atomic_write_json(path, obj)

    monkeypatch.setattr(pipeline_module, "atomic_write_json", killed_before_the_counts)
    with pytest.raises(RuntimeError, match="killed"):
        run_script("cvc_segmentation.py", smk)
    assert _outputs(smk)[1] == expected_masks  # published, and still in the progress folder too
    monkeypatch.undo()
    _as_snakemake_before_a_rerun(smk)
    run_script("cvc_segmentation.py", smk)
    assert "resumed 4 finished chunks (6 items), computing 0 chunks (0 items)" in Path(smk.log[0]).read_text()
    assert _outputs(smk) == (expected_tables, expected_masks)


# ------------------------------------------------------------------ the per-box mask file


def test_box_masks_round_trip_and_a_stack_of_the_wrong_height_is_refused(tmp_path, workspace):
    from groundflow.vision.image_io import ImageError

    rng = np.random.default_rng(0)
    masks = rng.random((3, 5, 7)) < 0.5
    save_box_masks(tmp_path / "m.png", masks)
    np.testing.assert_array_equal(load_box_masks(tmp_path / "m.png", 3), masks)
    with pytest.raises(ImageError, match="15 rows, not a stack of 2 box masks"):
        load_box_masks(tmp_path / "m.png", 2)
    with pytest.raises(ValueError, match=r"\(n >= 1, H, W\)"):
        save_box_masks(tmp_path / "flat.png", masks[0])
    # occlusion reads the file with the row's box count: a file holding one mask for the dog's two
    # boxes (the union layout) is the row's reject, not a walk of one mask for both boxes
    base, image_root, rows = workspace
    row = rows.iloc[[0]].copy()
    save_box_masks(base / "masks" / "one.png", np.ones((1, 64, 96), dtype=bool))
    row["mask_path"] = ["masks/one.png"]
    result = occlude(row, image_root, mask_root=base, out_dir=base / "o", relative_to=base, seed=0, min_coverage=0.0)
    check_accounting("occlusion", row["id"], result)
    assert result.kept.empty
    assert result.rejects["reason"].tolist() == ["mask of 'train/COCO_a-dog' is 96x32, image 96x64"]
    save_box_masks(base / "masks" / "odd.png", np.ones((1, 63, 96), dtype=bool))
    row["mask_path"] = ["masks/odd.png"]
    result = occlude(row, image_root, mask_root=base, out_dir=base / "o", relative_to=base, seed=0, min_coverage=0.0)
    assert "63 rows, not a stack of 2 box masks" in result.rejects["reason"].iloc[0]
