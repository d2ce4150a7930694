"""Grounding stage on a tiny random Grounding DINO (real transformers classes, loaded by path) and
on a fake external grounder run as a subprocess."""

import hashlib
import importlib.util
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from groundflow.io.stage import check_accounting
from groundflow.models.grounding_dino import build_tiny_grounding_dino, load_grounding_dino
from groundflow.models.spec import ModelSpec
from groundflow.vision.grounding import GrounderError, detect_boxes, run_external_grounder

FAKE_GLIP = Path(__file__).resolve().parents[1] / "data" / "fake_glip.py"
SIZES = {"a.jpg": (160, 120), "b.png": (96, 144), "c.jpg": (160, 120)}


def _load_fake_glip():
    spec = importlib.util.spec_from_file_location("fake_glip", FAKE_GLIP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    a = Image.new("RGB", SIZES["a.jpg"], (235, 235, 230))
    ImageDraw.Draw(a).ellipse((30, 20, 100, 90), fill=(200, 40, 40))
    a.save(root / "a.jpg", quality=95)
    b = Image.new("RGB", SIZES["b.png"], (20, 60, 120))
    ImageDraw.Draw(b).rectangle((10, 50, 80, 130), fill=(250, 220, 0))
    b.save(root / "b.png")
    c = Image.new("RGB", SIZES["c.jpg"], (60, 140, 60))
    ImageDraw.Draw(c).polygon([(20, 100), (80, 10), (140, 100)], fill=(90, 60, 30))
    c.save(root / "c.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    path = build_tiny_grounding_dino(tmp_path_factory.mktemp("models") / "grounding-dino-tiny", seed=0)
    return load_grounding_dino(ModelSpec(str(path))) + (path,)


def _instances(with_missing: bool = True) -> pd.DataFrame:
    rows = [
        ("a-dog", "a.jpg", "dog"),
        ("a-teddy bear", "a.jpg", "Teddy bear"),
        ("b-car", "b.png", "car"),
        ("b-umbrella", "b.png", "umbrella"),
        ("c-cat", "c.jpg", "cat"),
    ]
    if with_missing:
        rows.append(("gone-dog", "gone.jpg", "dog"))
    df = pd.DataFrame(rows, columns=["id", "image", "label"])
    df["image_id"] = df["image"].str.rsplit(".", n=1).str[0]
    df["width"] = [SIZES.get(i, (10, 10))[0] for i in df["image"]]
    df["height"] = [SIZES.get(i, (10, 10))[1] for i in df["image"]]
    return df


def _assert_valid_boxes(kept: pd.DataFrame, threshold: float, max_boxes: int):
    for row in kept.itertuples():
        boxes = np.array(row.boxes)
        scores = np.array(row.box_scores)
        assert 1 <= len(boxes) <= max_boxes and boxes.shape == (len(scores), 4)
        assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= row.width).all()
        assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= row.height).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (scores >= threshold).all() and (np.diff(scores) <= 0).all()
        assert row.box == row.boxes[0] and row.box_score == row.box_scores[0]


def test_loader_returns_real_grounding_dino_from_a_path(detector):
    model, processor, path = detector
    assert type(model).__name__ == "GroundingDinoForObjectDetection"
    assert type(processor).__name__ == "GroundingDinoProcessor"
    assert not model.training
    assert model.config.decoder_layers == 2 and model.config.d_model == 32
    again, _ = load_grounding_dino({"path": str(path), "dtype": "float32", "device": "cpu"})
    assert again.config.num_queries == model.config.num_queries == 30


def test_tiny_build_is_deterministic_given_seed(tmp_path):
    digests = []
    for name, seed in [("x", 0), ("y", 0), ("z", 1)]:
        path = build_tiny_grounding_dino(tmp_path / name, seed=seed)
        digests.append(hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1] != digests[2]


def test_detect_boxes_keeps_and_rejects_by_threshold(detector, image_root):
    model, processor, _ = detector
    df = _instances()
    everything = detect_boxes(
        df, image_root, model, processor, box_threshold=0.0, text_threshold=0.25, batch_size=4, max_boxes=30
    )
    check_accounting("grounding", df["id"], everything)
    assert list(everything.kept["id"]) == list(df["id"][:5])  # input order, missing image rejected
    assert everything.rejects["reason"].tolist() == [f"missing image file {image_root / 'gone.jpg'}"]
    best = dict(zip(everything.kept["id"], everything.kept["box_score"]))
    assert max(best.values()) > min(best.values())

    threshold = float(np.median(list(best.values())))
    result = detect_boxes(
        df, image_root, model, processor, box_threshold=threshold, text_threshold=0.25, batch_size=4, max_boxes=3
    )
    counts = check_accounting("grounding", df["id"], result)
    expected_kept = [i for i in df["id"] if best.get(i, -1.0) >= threshold]
    assert list(result.kept["id"]) == expected_kept
    assert 1 <= counts["out"] < 5 and counts["rejected"] == 6 - counts["out"]
    labels = dict(zip(df["id"], df["label"]))
    images = dict(zip(df["id"], df["image"]))
    expected_rejects = [
        f"no box scoring >= {threshold:g} for '{labels[i]}' in {images[i]}"
        for i in df["id"][:5]
        if i not in expected_kept
    ]
    assert result.rejects["reason"].tolist()[:-1] == expected_rejects
    assert set(result.rejects["stage"]) == {"grounding"}
    _assert_valid_boxes(result.kept, threshold, max_boxes=3)
    assert set(df.columns) < set(result.kept.columns)

    # the thresholded boxes are the unthresholded run's boxes scoring >= threshold, capped
    reference = everything.kept.set_index("id")
    for row in result.kept.itertuples():
        ref_scores = np.array(reference.loc[row.id, "box_scores"])
        n = min(int((ref_scores >= threshold).sum()), 3)
        np.testing.assert_allclose(row.box_scores, ref_scores[:n], atol=1e-6)
        np.testing.assert_allclose(row.boxes, reference.loc[row.id, "boxes"][:n], atol=1e-4)


def test_detect_boxes_batched_equals_one_at_a_time(detector, image_root):
    model, processor, _ = detector
    df = _instances(with_missing=False)
    kwargs = dict(box_threshold=0.55, text_threshold=0.25, max_boxes=5)
    single = detect_boxes(df, image_root, model, processor, batch_size=1, **kwargs)
    batched = detect_boxes(df, image_root, model, processor, batch_size=4, **kwargs)
    assert list(single.kept["id"]) == list(batched.kept["id"])
    assert single.rejects["reason"].tolist() == batched.rejects["reason"].tolist()
    for one, many in zip(single.kept.itertuples(), batched.kept.itertuples()):
        assert len(one.boxes) == len(many.boxes)
        np.testing.assert_allclose(one.boxes, many.boxes, atol=1e-3)
        np.testing.assert_allclose(one.box_scores, many.box_scores, atol=1e-5)


def test_detect_boxes_on_empty_input(detector, image_root):
    model, processor, _ = detector
    result = detect_boxes(
        _instances().iloc[0:0], image_root, model, processor,
        box_threshold=0.6, text_threshold=0.25, batch_size=4, max_boxes=3,
    )
    assert result.kept.empty and result.rejects.empty
    assert {"boxes", "box_scores", "box", "box_score"} <= set(result.kept.columns)


def _glip_command(*extra: str) -> str:
    return " ".join(
        [shlex.quote(sys.executable), shlex.quote(str(FAKE_GLIP)),
         "--requests {requests} --boxes {boxes} --threshold {threshold}", *extra]
    )


def test_external_grounder_same_columns_and_rejects(image_root, tmp_path):
    fake = _load_fake_glip()
    df = _instances().drop(columns=["width", "height"])  # sizes come from the image headers
    score = {i: fake.label_score(label) for i, label in zip(df["id"], df["label"])}
    assert max(score.values()) - min(score.values()) > 0.01
    threshold = float(np.median([score[i] for i in df["id"][:4]]))
    result = run_external_grounder(
        df, image_root, command=_glip_command("--omit c-cat"),
        box_threshold=threshold, max_boxes=5, workdir=tmp_path / "glip",
    )
    check_accounting("grounding", df["id"], result)
    expected_kept = [i for i in df["id"][:4] if score[i] >= threshold]
    assert list(result.kept["id"]) == expected_kept
    for row in result.kept.itertuples():
        width, height = SIZES[row.image]
        s = score[row.id]
        # the off-image box scoring 0.99 is clipped to nothing and dropped; the grown box is clipped
        expected = [([width / 4, height / 4, 3 * width / 4, 3 * height / 4], s)]
        if s - 0.25 >= threshold:
            expected.append(([0.0, 0.0, float(width), float(height)], round(s - 0.25, 6)))
        assert row.boxes == [b for b, _ in expected] and row.box_scores == [v for _, v in expected]
        assert row.box == row.boxes[0] and row.box_score == s
    reasons = dict(zip(result.rejects["id"], result.rejects["reason"]))
    for i in df["id"][:4]:
        if i not in expected_kept:
            row = df.set_index("id").loc[i]
            assert reasons[i] == f"no box scoring >= {threshold:g} for '{row.label}' in {row.image}"
    assert reasons["c-cat"] == "external grounder returned no result for 'c-cat' ('cat' in c.jpg)"
    assert reasons["gone-dog"].startswith("missing image file ")
    requests = (tmp_path / "glip" / "requests.jsonl").read_text().splitlines()
    assert len(requests) == 5 and str((image_root / "a.jpg").resolve()) in requests[0]


def test_external_grounder_failures_raise(image_root, tmp_path):
    df = _instances(with_missing=False)
    with pytest.raises(GrounderError, match=r"exited with status 3; stderr tail:\nfake_glip: CUDA out of memory"):
        run_external_grounder(df, image_root, command=_glip_command("--fail"), workdir=tmp_path)
    with pytest.raises(GrounderError, match="id 'zzz' was not requested"):
        run_external_grounder(df, image_root, command=_glip_command("--extra-id zzz"), workdir=tmp_path)
    # a command that exits 0 without writing the table must not be answered by an earlier table
    assert (tmp_path / "boxes.jsonl").exists()
    with pytest.raises(GrounderError, match="wrote no box table"):
        run_external_grounder(df, image_root, command=f"{shlex.quote(sys.executable)} -c pass", workdir=tmp_path)


# ------------------------------------------------------------------ the stage script: one threshold per backend


def _grounding_job(base, image_root, detector_path, opts):
    from groundflow.io import write_table
    from script_harness import FakeSnakemake, stage_outputs

    records = base / "causality.parquet"
    write_table(_instances(with_missing=False), records)
    results = base / "results" / "cvc"
    return FakeSnakemake(
        input={"records": str(records)},
        output=stage_outputs(results / "grounding", "0"),
        params={"models": {"detector": {"path": str(detector_path), "device": "cpu"}},
                "opts": {"max_boxes": 3, "batch_size": 4, "chunk_size": 64, "text_threshold": 0.25,
                         "glip_command": "", **opts},
                "image_root": str(image_root), "progress_dir": str(results / ".progress" / "grounding" / "0")},
        log=[str(base / "logs" / "0.log")],
        wildcards={"shard": "0"},
    )


def test_each_backend_is_given_its_own_threshold_key(detector, image_root, tmp_path):
    # With one shared key the paper preset's GLIP 0.6 reached Grounding DINO; now GLIP's key is
    # never read for Grounding DINO, nor Grounding DINO's for GLIP.
    from groundflow.io import read_table
    from script_harness import run_script

    dino = _grounding_job(tmp_path / "dino", image_root, detector[2],
                          {"backend": "grounding_dino", "dino_box_threshold": 0.0, "glip_threshold": 0.99})
    run_script("cvc_grounding.py", dino)
    kept = read_table(dino.output.kept)
    assert len(kept) == 5 and read_table(dino.output.rejects).empty  # at 0.99 most would go
    assert kept["box_score"].min() < 0.99

    glip = _grounding_job(tmp_path / "glip", image_root, detector[2],
                          {"backend": "glip", "glip_command": _glip_command(), "glip_threshold": 0.99,
                           "dino_box_threshold": 0.0})
    run_script("cvc_grounding.py", glip)
    assert read_table(glip.output.kept).empty  # the fake scores every label below 0.9
    reasons = read_table(glip.output.rejects)["reason"]
    assert len(reasons) == 5 and reasons.str.startswith("no box scoring >= 0.99 for ").all()
