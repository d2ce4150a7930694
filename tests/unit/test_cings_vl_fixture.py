"""The CINGS demo's vision-language fixture: scenes of drawn shapes whose captions, questions and
POPE annotations agree with what was drawn."""

import json
import re
from collections import Counter

import numpy as np
from PIL import Image

from groundflow.cings.fixture import COLOURS, COMPANIONS, SCENE_OBJECTS, make_vl_fixture


def _load(folder):
    return tuple(json.loads((folder / f"{name}.json").read_text()) for name in ("scenes", "pretrain", "instruct"))


def test_outputs_and_return_value(tmp_path):
    summary = make_vl_fixture(tmp_path, seed=0, n_images=6)
    assert summary == {"images": 6, "pretrain": 6, "instruct": 7, "scenes": 6}
    scenes, pretrain, instruct = _load(tmp_path)
    assert [s["image"] for s in scenes] == [f"shape_{i:03d}.png" for i in range(6)]
    assert all((tmp_path / "images" / s["image"]).is_file() for s in scenes)
    assert instruct[-1]["id"] == "instruct-text" and "image" not in instruct[-1]


def test_same_seed_same_bytes_other_seed_other_scenes(tmp_path):
    make_vl_fixture(tmp_path / "a", seed=1, n_images=5)
    make_vl_fixture(tmp_path / "b", seed=1, n_images=5)
    make_vl_fixture(tmp_path / "c", seed=2, n_images=5)
    for name in ("scenes.json", "pretrain.json", "instruct.json", "images/shape_004.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/scenes.json").read_text() != (tmp_path / "c/scenes.json").read_text()


def test_captions_and_answers_name_exactly_the_scene_objects(tmp_path):
    make_vl_fixture(tmp_path, seed=0, n_images=12)
    scenes, pretrain, instruct = _load(tmp_path)
    kinds = "|".join(SCENE_OBJECTS)
    colours = "|".join(COLOURS)
    for scene, caption, question in zip(scenes, pretrain, instruct):
        assert caption["image"] == question["image"] == scene["image"]
        assert 1 <= len(scene["objects"]) <= 3 and len(set(scene["objects"])) == len(scene["objects"])
        named = re.findall(rf"\b(?:{colours}) ({kinds})\b", caption["conversations"][1]["value"])
        assert named == scene["objects"]
        asked, answer = question["conversations"][0]["value"], question["conversations"][1]["value"]
        if "What shapes" in asked:
            assert re.findall(rf"\b(?:{colours}) ({kinds})\b", answer) == scene["objects"]
        elif "How many" in asked:
            words = {1: "one", 2: "two", 3: "three"}
            assert words[len(scene["objects"])] in answer
        else:
            kind = re.search(rf"Is there a ({kinds}) in the image", asked).group(1)
            assert answer == ("Yes." if kind in scene["objects"] else "No.")
    yes_no = [q["conversations"][1]["value"] for q in instruct if "Is there" in q["conversations"][0]["value"]]
    assert set(yes_no) == {"Yes.", "No."}


def test_each_object_is_drawn_in_its_own_quarter(tmp_path):
    make_vl_fixture(tmp_path, seed=0, n_images=10)
    scenes, _, _ = _load(tmp_path)
    for scene in scenes:
        pixels = np.asarray(Image.open(tmp_path / "images" / scene["image"]).convert("RGB"))
        height, width = pixels.shape[:2]
        painted = (pixels != 255).any(axis=2)
        quarters = [painted[r * (height // 2):(r + 1) * (height // 2), c * (width // 2):(c + 1) * (width // 2)].any()
                    for r in (0, 1) for c in (0, 1)]
        assert sum(quarters) == len(scene["objects"]), scene


def test_popular_objects_and_companions_give_structure(tmp_path):
    make_vl_fixture(tmp_path, seed=0, n_images=120)
    scenes, _, _ = _load(tmp_path)
    frequency = Counter(o for s in scenes for o in s["objects"])
    assert frequency.most_common(1)[0][0] in ("circle", "square")
    assert min(frequency.values()) < 0.7 * max(frequency.values())
    for kind, companion in COMPANIONS.items():
        together = Counter(o for s in scenes if kind in s["objects"] for o in s["objects"] if o != kind)
        assert together[companion] == max(together.values()), (kind, together)
