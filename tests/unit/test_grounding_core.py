"""Pure helpers of the grounding stage: prompts, box clipping/filtering, batching, the external
grounder's command template and box table."""

import json

import numpy as np
import pytest
import torch

from groundflow.vision.grounding import (
    GrounderError,
    _strict_below,
    box_columns,
    clip_boxes,
    filter_boxes,
    format_command,
    grounding_prompt,
    no_box_reason,
    parse_box_table,
    plan_batches,
)


@pytest.mark.parametrize(
    "label, prompt",
    [("dog", "dog."), ("Hot Dog", "hot dog."), ("  teddy   bear ", "teddy bear."), ("st. bernard.", "st. bernard.")],
)
def test_grounding_prompt_is_lowercase_and_ends_with_period(label, prompt):
    assert grounding_prompt(label) == prompt


def test_no_box_reason_names_label_image_and_threshold():
    assert no_box_reason("dog", "train/a.jpg", 0.6) == "no box scoring >= 0.6 for 'dog' in train/a.jpg"
    assert no_box_reason("cup", "b.png", 0.35) == "no box scoring >= 0.35 for 'cup' in b.png"


def test_clip_boxes_to_image():
    boxes = np.array([[-5.0, 10.0, 50.0, 130.0], [1.5, -2.0, 3.0, 4.0], [45.0, 0.0, 60.0, 10.0]])
    clipped = clip_boxes(boxes, width=40, height=100)
    np.testing.assert_array_equal(
        clipped, [[0.0, 10.0, 40.0, 100.0], [1.5, 0.0, 3.0, 4.0], [40.0, 0.0, 40.0, 10.0]]
    )
    assert clip_boxes(np.zeros((0, 4)), 10, 10).shape == (0, 4)


def test_filter_boxes_threshold_inclusive_sorted_capped():
    boxes = np.array(
        [
            [0, 0, 10, 10],  # 0.59: below
            [1, 1, 11, 11],  # 0.6: exactly at the threshold, kept
            [2, 2, 12, 12],  # 0.9
            [3, 3, 3, 13],  # 0.95 but zero width
            [4, 4, 14, 14],  # 0.7
            [5, 5, 15, 15],  # 0.9, tie with row 2: keeps input order
        ],
        dtype=float,
    )
    scores = np.array([0.59, 0.6, 0.9, 0.95, 0.7, 0.9])
    kept_boxes, kept_scores = filter_boxes(boxes, scores, threshold=0.6, max_boxes=10)
    np.testing.assert_array_equal(kept_scores, [0.9, 0.9, 0.7, 0.6])
    np.testing.assert_array_equal(kept_boxes, boxes[[2, 5, 4, 1]])

    kept_boxes, kept_scores = filter_boxes(boxes, scores, threshold=0.6, max_boxes=2)
    np.testing.assert_array_equal(kept_boxes, boxes[[2, 5]])
    np.testing.assert_array_equal(kept_scores, [0.9, 0.9])

    kept_boxes, kept_scores = filter_boxes(boxes, scores, threshold=0.96, max_boxes=10)
    assert kept_boxes.shape == (0, 4) and kept_scores.shape == (0,)


def test_filter_boxes_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        filter_boxes(np.zeros((2, 4)), np.array([0.5]), 0.1, 5)


def test_box_columns_best_first_as_python_floats():
    columns = box_columns(np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 5.0, 5.0]]), np.array([0.8, 0.65]))
    assert columns == {
        "boxes": [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 5.0, 5.0]],
        "box_scores": [0.8, 0.65],
        "box": [1.0, 2.0, 3.0, 4.0],
        "box_score": 0.8,
    }
    assert all(type(v) is float for v in columns["box"])


def test_plan_batches_groups_same_sizes_in_first_seen_order():
    keys = [(640, 480), (480, 640), (640, 480), (640, 480), None, (480, 640)]
    assert plan_batches(keys, 2) == [[0, 2], [3], [1, 5], [4]]
    assert plan_batches(keys, 10) == [[0, 2, 3], [1, 5], [4]]
    assert plan_batches(keys, 1) == [[0], [2], [3], [1], [5], [4]]
    assert plan_batches([], 4) == []
    with pytest.raises(ValueError):
        plan_batches(keys, 0)


def test_strict_below_makes_the_processors_strict_test_inclusive():
    threshold = 0.6
    below = _strict_below(threshold)
    at = torch.tensor([0.6, np.nextafter(np.float32(0.6), np.float32(0.0))], dtype=torch.float32)
    assert (at > below).tolist() == [True, False]


def test_format_command_splits_then_fills_fields():
    args = format_command(
        "python 'my wrapper.py' --requests {requests} --boxes={boxes} -t {threshold} -k {max_boxes}",
        requests="/work dir/requests.jsonl",
        boxes="/work dir/boxes.jsonl",
        threshold=0.6,
        max_boxes=10,
    )
    assert args == [
        "python",
        "my wrapper.py",
        "--requests",
        "/work dir/requests.jsonl",
        "--boxes=/work dir/boxes.jsonl",
        "-t",
        "0.6",
        "-k",
        "10",
    ]
    assert format_command(["run", "{boxes}"], boxes="b.jsonl") == ["run", "b.jsonl"]
    with pytest.raises(ValueError, match="unknown field 'model'"):
        format_command("glip --model {model}", requests="r", boxes="b")
    with pytest.raises(ValueError, match="empty"):
        format_command("  ")


def _lines(*rows):
    return [json.dumps(r) if not isinstance(r, str) else r for r in rows]


def test_parse_box_table_reads_boxes_and_scores():
    table = parse_box_table(
        _lines(
            {"id": "a-dog", "boxes": [[1, 2, 3, 4], [0, 0, 9, 9]], "box_scores": [0.7, 0.61]},
            "",
            {"id": "b-cat", "boxes": [], "box_scores": []},
        ),
        {"a-dog", "b-cat", "c-cup"},
    )
    assert sorted(table) == ["a-dog", "b-cat"]
    np.testing.assert_array_equal(table["a-dog"][0], [[1, 2, 3, 4], [0, 0, 9, 9]])
    np.testing.assert_array_equal(table["a-dog"][1], [0.7, 0.61])
    assert table["b-cat"][0].shape == (0, 4) and table["b-cat"][1].shape == (0,)


@pytest.mark.parametrize(
    "rows, message",
    [
        (["{not json"], "line 1: not JSON"),
        ([{"id": "a-dog", "boxes": []}], "line 1: needs an object with id, boxes, box_scores"),
        ([{"id": "zzz", "boxes": [], "box_scores": []}], "line 1: id 'zzz' was not requested"),
        (
            [{"id": "a-dog", "boxes": [], "box_scores": []}, {"id": "a-dog", "boxes": [], "box_scores": []}],
            "line 2: id 'a-dog' appears twice",
        ),
        ([{"id": "a-dog", "boxes": [[1, 2, 3, 4]], "box_scores": [0.5, 0.4]}], "1 boxes but 2 box_scores"),
        ([{"id": "a-dog", "boxes": [[1, 2, 3]], "box_scores": [0.5]}], "line 1: boxes must be"),
        ([{"id": "a-dog", "boxes": [[1, 2, 3, 4, 5, 6, 7, 8]], "box_scores": [0.5, 0.5]}], "1 boxes but 2"),
        ([{"id": "a-dog", "boxes": [[1, 2, 3, "NaN"]], "box_scores": [0.5]}], "non-finite"),
    ],
)
def test_parse_box_table_rejects_protocol_violations(rows, message):
    with pytest.raises(GrounderError, match=message):
        parse_box_table(_lines(*rows), {"a-dog"})


def test_backend_box_threshold_reads_the_selected_backends_key_only():
    from groundflow.vision.grounding import backend_box_threshold

    opts = {"backend": "grounding_dino", "dino_box_threshold": 0.35, "glip_threshold": 0.6}
    assert backend_box_threshold(opts) == 0.35
    assert backend_box_threshold({**opts, "backend": "glip"}) == 0.6
    with pytest.raises(ValueError, match="must be one of"):
        backend_box_threshold({**opts, "backend": "owl"})


def test_paper_preset_gives_grounding_dino_its_own_threshold_and_refuses_the_shared_key():
    from pathlib import Path

    import yaml

    from groundflow.config import ConfigError, validate_config
    from groundflow.vision.grounding import backend_box_threshold

    root = Path(__file__).resolve().parents[2]
    preset = validate_config(yaml.safe_load((root / "configs/cvc-paper.yaml").read_text()))
    grounding = preset["cvc"]["grounding"]
    # the preset runs Grounding DINO at that detector's own demo values, not GLIP's 0.6
    assert grounding["backend"] == "grounding_dino"
    assert backend_box_threshold(grounding) == 0.35 and grounding["text_threshold"] == 0.25
    assert backend_box_threshold({**grounding, "backend": "glip"}) == 0.6
    # an old config's shared key is an error, not silently given to whichever backend runs
    old = yaml.safe_load((root / "configs/cvc-paper.yaml").read_text())
    old["cvc"]["grounding"]["box_threshold"] = 0.6
    with pytest.raises(ConfigError, match=r"unknown key 'cvc\.grounding\.box_threshold'"):
        validate_config(old)
