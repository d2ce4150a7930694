"""The CVC evaluation demo's benchmark files (groundflow.cvc.eval_fixture): drawn scenes asked about
in the records of groundflow's lmms-eval tasks, checked by the harness's own record reader."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groundflow.cvc.eval_fixture import (
    MULTIPLE_CHOICE_FILE,
    QUESTION_KINDS,
    YES_NO_FILE,
    image_name,
    make_eval_fixture,
    scene_rng,
)
from groundflow.cvc.fixture import draw_scene, make_fixture
from groundflow.evaluate.harness import read_task_records

N_IMAGES = 6
TASKS = {YES_NO_FILE: "groundflow_yes_no", MULTIPLE_CHOICE_FILE: "groundflow_multiple_choice"}


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cvc-eval") / "clean"
    return folder, make_eval_fixture(folder, seed=3, n_images=N_IMAGES, include_bad=False)


@pytest.fixture(scope="module")
def with_bad(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cvc-eval") / "bad"
    return folder, make_eval_fixture(folder, seed=3, n_images=N_IMAGES, include_bad=True)


def redrawn(seed: int, n: int) -> dict[str, tuple[np.ndarray, list[str]]]:
    """The scenes as documented: drawn in order from scene_rng(seed)."""
    rng = scene_rng(seed)
    scenes = {}
    for index in range(n):
        image, kinds = draw_scene(rng)
        scenes[image_name(index)] = (np.asarray(image), kinds)
    return scenes


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = make_eval_fixture(tmp_path / "a", seed=5, n_images=3, include_bad=True)
    make_eval_fixture(tmp_path / "b", seed=5, n_images=3, include_bad=True)
    make_eval_fixture(tmp_path / "c", seed=6, n_images=3, include_bad=True)
    a, b, c = (all_bytes(tmp_path / name) for name in "abc")
    assert sorted(a) == ["images/scene_0000.png", "images/scene_0001.png", "images/scene_0002.png",
                         MULTIPLE_CHOICE_FILE, YES_NO_FILE]
    assert a == b
    assert a["images/scene_0000.png"] != c["images/scene_0000.png"]
    assert first["images"] == 3


def test_images_are_not_the_training_fixtures(clean, tmp_path):
    folder, summary = clean
    make_fixture(tmp_path, seed=3, n_images=1, include_bad=False)
    training = np.asarray(Image.open(tmp_path / "images" / "scene_0000.png").convert("RGB"))
    # the training fixture's first scene is the first draw of default_rng(seed): check that, so the
    # comparison below compares with what training really draws
    assert np.array_equal(training, np.asarray(draw_scene(np.random.default_rng(3))[0]))
    for name in summary["drawn"]:
        assert not np.array_equal(np.asarray(Image.open(folder / name).convert("RGB")), training), name


def test_yes_no_is_balanced_and_true_of_the_drawn_scenes(clean):
    folder, summary = clean
    records = read_lines(folder / YES_NO_FILE)
    scenes = redrawn(3, N_IMAGES)
    assert len(records) == 2 * N_IMAGES
    assert summary["yes_no"] == {"path": str(folder / YES_NO_FILE), "records": 2 * N_IMAGES, "bad": 0,
                                 "yes": N_IMAGES, "no": N_IMAGES}
    for name, (pixels, kinds) in scenes.items():
        # the file under this name is the scene whose kinds the answers are checked against
        assert np.array_equal(np.asarray(Image.open(folder / name).convert("RGB")), pixels), name
        asked = [r for r in records if r["image"] == name]
        assert sorted(r["answer"] for r in asked) == ["no", "yes"], name
        for record in asked:
            kind = record["question_id"].rsplit("|", 1)[1]
            assert record["question_id"] == f"{name}|random|{kind}"
            assert kind in QUESTION_KINDS  # never the unnamed "object"
            assert record["question"] == f"Is there {'an' if kind[0] in 'aeiou' else 'a'} {kind} in the image?"
            assert (kind in kinds) == (record["answer"] == "yes"), (name, kind, kinds)


def test_multiple_choice_letter_points_at_the_drawn_object(clean):
    folder, summary = clean
    records = read_lines(folder / MULTIPLE_CHOICE_FILE)
    scenes = redrawn(3, N_IMAGES)
    assert [r["image"] for r in records] == list(scenes)
    assert summary["multiple_choice"]["records"] == N_IMAGES
    for record in records:
        kinds = scenes[record["image"]][1]
        options = record["options"]
        assert record["question"] == "Which of these objects is in the image?"
        assert len(options) == 4 and len(set(options)) == 4 and set(options) <= set(QUESTION_KINDS)
        correct = options["ABCD".index(record["answer"])]
        assert correct in kinds
        assert [o for o in options if o in kinds] == [correct]


def test_answer_letters_vary_with_the_seed(tmp_path):
    summary = make_eval_fixture(tmp_path, seed=0, n_images=12, include_bad=False)
    letters = {r["answer"] for r in read_lines(Path(summary["multiple_choice"]["path"]))}
    assert len(letters) >= 3, letters  # 12 draws of 4 letters: one letter throughout would be a bug


def test_every_good_record_passes_the_harness_reader(clean):
    folder, _ = clean
    for file, task in TASKS.items():
        records, rejects = read_task_records(task, folder / file)
        assert rejects == []
        assert [r["question_id"] for r in records] == [r["question_id"] for r in read_lines(folder / file)]
        assert all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in records)


def test_the_bad_records_are_exactly_the_expected_ones(with_bad, clean):
    folder, summary = with_bad
    _, clean_summary = clean
    expected = {YES_NO_FILE: ("bad-answer-maybe", "answer must be 'yes' or 'no'"),
                MULTIPLE_CHOICE_FILE: ("bad-missing-image", "image not found")}
    assert {b["file"]: (b["question_id"], b["reason"]) for b in summary["bad_records"]} == expected
    assert summary["yes_no"]["records"] == 2 * N_IMAGES + 1 and summary["yes_no"]["bad"] == 1
    assert summary["multiple_choice"]["records"] == N_IMAGES + 1 and summary["multiple_choice"]["bad"] == 1
    for file, task in TASKS.items():
        bad_id, reason = expected[file]
        lines = read_lines(folder / file)
        assert [r["question_id"] for r in lines].count(bad_id) == 1
        # the bad record is added: the good records are those of the fixture without it
        good = [r for r in lines if r["question_id"] != bad_id]
        assert good == read_lines(Path(clean_summary[file.split(".")[0]]["path"]))
        records, rejects = read_task_records(task, folder / file)
        bad_line = [r["question_id"] for r in lines].index(bad_id) + 1
        assert [(r["question_id"], r["line"]) for r in rejects] == [(bad_id, bad_line)]
        assert rejects[0]["reason"].startswith(reason), rejects
        assert [r["question_id"] for r in records] == [r["question_id"] for r in good]


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": 0, "n_images": 0}, "n_images must be an integer >= 1"),
    ({"seed": -1, "n_images": 2}, "seed must be a non-negative integer"),
    ({"seed": 1.5, "n_images": 2}, "seed must be a non-negative integer"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_eval_fixture(tmp_path, include_bad=False, **kwargs)
    assert not any(tmp_path.iterdir())
