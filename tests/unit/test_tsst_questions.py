"""TSST question loaders: partitions (and YAML's integer pitfall), ScienceQA's hint and 1-based
labels, VCR's object-tag naming, and a reject with its line and reason for every bad record."""

import json
from pathlib import Path

import pytest
import yaml

from groundflow.tsst.questions import (
    QuestionFileError,
    apply_partition,
    load_questions,
    parse_partition,
    person_names,
    read_subset,
    tokens_to_text,
    vcr_question,
)


# ------------------------------------------------------------------------------ partitions


def test_partition_is_an_inclusive_start_end_string():
    assert parse_partition("0_499") == (0, 499)
    assert parse_partition(" 440_499 ") == (440, 499)
    assert parse_partition(None) is None
    assert apply_partition(list("abcdef"), "1_3") == ["b", "c", "d"]
    assert apply_partition(list("abcdef"), "5_5") == ["f"]


@pytest.mark.parametrize("bad", ["0-499", "a_b", "1_2_3", "", "_5"])
def test_partition_of_the_wrong_form_is_refused(bad):
    with pytest.raises(QuestionFileError, match="start_end"):
        parse_partition(bad)


def test_partition_ending_before_its_start_or_past_the_file_is_refused():
    with pytest.raises(QuestionFileError, match="ends before it starts"):
        parse_partition("9_3")
    with pytest.raises(QuestionFileError, match=r"available: 0_5"):
        apply_partition(list("abcdef"), "2_6")


def test_the_yaml_integer_pitfall_is_refused_with_advice_to_quote():
    config = yaml.safe_load("scienceqa: 440_499\nvcr: 0_2999\nquoted: '440_499'\n")
    # PyYAML reads underscores as digit separators unless the number starts with 0
    assert config["scienceqa"] == 440499 and config["vcr"] == "0_2999"
    with pytest.raises(QuestionFileError, match=r"quote it.*\"440_499\"") as error:
        parse_partition(config["scienceqa"])
    assert "440499" in str(error.value)
    assert parse_partition(config["quoted"]) == (440, 499)
    with pytest.raises(QuestionFileError, match="not the bool"):
        parse_partition(True)


# ------------------------------------------------------------------------------ ScienceQA


def _sqa(i, **over):
    record = {"id": f"q{i}", "question": f"Which is number {i}?", "hint": "", "answer_choices": ["one", "two", "three"],
              "answer_str": "two", "img_path": None, "answer_label": 2, "caption": "c"}
    record.update(over)
    return record


def _write(path: Path, lines) -> Path:
    data = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    path.write_bytes(data)
    return path


def test_scienceqa_hint_prefix_labels_and_images(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"png")
    path = _write(tmp_path / "q.jsonl", [
        _sqa(0, hint="The jar holds 3.5 litres.", img_path="a.png"),
        _sqa(1, hint="   ", img_path=""),
        _sqa(2, answer_label=3, answer_str="three"),
    ])
    result = load_questions(path, kind="scienceqa", image_root=tmp_path / "img")
    kept = result.kept.set_index("id")
    assert kept.loc["q0", "question"] == "The jar holds 3.5 litres. Which is number 0?"
    assert kept.loc["q1", "question"] == "Which is number 1?"  # a blank hint is no hint
    assert kept.loc["q0", "image"] == "a.png"
    assert kept.loc["q1", "image"] is None and kept.loc["q2", "image"] is None
    assert kept.loc["q2", "answer_label"] == 3 and kept.loc["q2", "answer"] == "three"
    assert list(kept.loc["q0", "choices"]) == ["one", "two", "three"]
    assert set(kept["source"]) == {"scienceqa"}
    assert result.counts["in"] == 3 == result.counts["out"]


def test_every_kind_of_bad_scienceqa_record_is_rejected_with_line_and_reason(tmp_path):
    (tmp_path / "img").mkdir()
    path = _write(tmp_path / "q.jsonl", [
        _sqa(0),                                                   # 1 kept
        b'{"id": "q1", "question": "cut',                          # 2 bad JSON
        b'{"id": "q2", "question": "caf\xe9"}',                   # 3 not UTF-8
        {k: v for k, v in _sqa(3).items() if k != "question"},     # 4 missing field
        _sqa(4, answer_label="2"),                                 # 5 wrong type
        _sqa(5, answer_choices=[]),                                # 6 empty choices
        _sqa(6, answer_label=4),                                   # 7 label out of range (1-based: 4 > 3)
        _sqa(7, answer_label=0),                                   # 8 label out of range (0 is not 1-based)
        _sqa(8, img_path="gone.png"),                              # 9 missing image
        _sqa(0, question="again"),                                 # 10 duplicate id
        _sqa(9, answer_str="one"),                                 # 11 answer text is not the labelled choice
        _sqa(10, img_path="/etc/passwd"),                          # 12 image outside the folder
        b"[1, 2]",                                                 # 13 not an object
        b"",                                                       # blank: not a record
        _sqa(11),                                                  # 15 kept
    ])
    result = load_questions(path, kind="scienceqa", image_root=tmp_path / "img")
    assert sorted(result.kept["id"]) == ["q0", "q11"]
    reasons = dict(zip(result.rejects["id"], result.rejects["reason"]))
    expected = {
        "line:2": "line 2 is not valid JSON",
        "line:3": "line 3 is not UTF-8",
        "q3": "line 4 (id 'q3'): missing field 'question'",
        "q4": "field 'answer_label' is '2', not an integer",
        "q5": "empty choices",
        "q6": "answer_label 4 out of range 1..3",
        "q7": "answer_label 0 out of range 1..3",
        "q8": "missing image file gone.png",
        "line:10": "line 10: duplicate id 'q0' (first at line 1)",
        "q9": "answer_str 'one' is not choice 2 'two'",
        "q10": "must lie inside the image folder",
        "line:13": "line 13 is a list, not an object",
    }
    assert set(reasons) == set(expected)
    for rid, fragment in expected.items():
        assert fragment in reasons[rid], (rid, reasons[rid])
    assert result.counts["in"] == 14 == result.counts["out"] + result.counts["rejected"]
    assert result.counts["lines"] == 14


def test_partition_counts_lines_before_validation(tmp_path):
    path = _write(tmp_path / "q.jsonl", [_sqa(0), b"{broken", _sqa(2), _sqa(3), _sqa(4)])
    result = load_questions(path, kind="scienceqa", image_root=tmp_path, partition="1_3")
    # lines 2..4 of the file: the bad line keeps its place, so the same partition always holds the same questions
    assert list(result.kept["id"]) == ["q2", "q3"]
    assert list(result.rejects["id"]) == ["line:2"]
    assert result.counts["selected"] == 3 and result.counts["lines"] == 5
    with pytest.raises(QuestionFileError, match="quote it"):
        load_questions(path, kind="scienceqa", image_root=tmp_path, partition=440499)


def test_missing_file_and_unknown_kind_fail_loudly(tmp_path):
    with pytest.raises(FileNotFoundError, match="scienceqa question file not found"):
        load_questions(tmp_path / "nope.jsonl", kind="scienceqa", image_root=tmp_path)
    with pytest.raises(QuestionFileError, match="kind must be one of"):
        load_questions(tmp_path / "nope.jsonl", kind="aokvqa", image_root=tmp_path)


# ------------------------------------------------------------------------------ VCR naming

WIDTH = 90.0


def _box(x1, x2):
    return [x1, 0.0, x2, 50.0, 0.9]


def test_one_person_is_named_by_the_third_its_left_edge_is_in():
    for left, expected in [(0, "person on the left"), (30, "person on the left"), (30.5, "person in the middle"),
                           (60, "person in the middle"), (61, "person on the right")]:
        # a wide box: its centre would land a third further right, so the left edge decides
        assert person_names([0], [_box(left, left + 28)], WIDTH) == {0: expected}


def test_two_and_three_people_are_ordered_by_box_centre():
    boxes = [_box(50, 80), _box(0, 20), _box(20, 90)]
    assert person_names([0, 1], boxes, WIDTH) == {1: "person on the left", 0: "person on the right"}
    # centres 65, 10, 55: the third person is in the middle even though its left edge is left of the first's
    assert person_names([0, 1, 2], boxes, WIDTH) == {
        1: "person on the left", 2: "person in the middle", 0: "person on the right"}


def test_more_than_three_people_are_binned_by_thirds_later_ones_another():
    boxes = [_box(0, 10), _box(15, 25), _box(40, 50), _box(70, 80), _box(75, 85)]
    assert person_names([0, 1, 2, 3, 4], boxes, WIDTH) == {
        0: "person on the left", 1: "another person on the left", 2: "person in the middle",
        3: "person on the right", 4: "another person on the right"}


def test_multi_index_tag_names_all_its_objects():
    names = ["person on the left", "person on the right", "dog"]
    text = tokens_to_text(["Why", "are", [0, 1], "looking", "at", "the", [2], "?"], names)
    # the original kept only the first index: "Why are person on the left looking at the dog?"
    assert text == "Why are person on the left and person on the right looking at the dog?"
    assert tokens_to_text([[0, 1, 2], ",", "all", "."], names) == "person on the left, person on the right and dog, all."


def _vcr(tmp_path: Path, boxes, **over) -> dict:
    folder = tmp_path / "vcr1images" / "movie"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jpg").write_bytes(b"jpg")
    (folder / "a.json").write_text(json.dumps({"boxes": boxes, "width": WIDTH, "height": 50}))
    record = {"annot_id": "val-1", "objects": ["person", "person", "dog", "person"],
              "question": ["Is", [0, 1], "next", "to", [2], "?"],
              "answer_choices": [["Yes", "."], ["No", ",", [3], "is", "."], [[3], "is", "alone", "."], ["Maybe", "."]],
              "answer_label": 2, "img_fn": "movie/a.jpg", "metadata_fn": "movie/a.json"}
    record.update(over)
    return record


def test_vcr_record_names_every_referred_person_and_shifts_the_label(tmp_path):
    boxes = [_box(60, 80), _box(0, 20), _box(30, 40), _box(35, 55)]
    row = vcr_question(_vcr(tmp_path, boxes), tmp_path / "vcr1images")
    # people 0, 1 and 3 are referred to, 1 only as the second index of a tag (the original saw
    # only first indices, so it would have named two people and left 1 a bare "person"); centres 70, 10, 45
    assert row["question"] == "Is person on the right and person on the left next to dog?"
    assert row["choices"] == ["Yes.", "No, person in the middle is.", "person in the middle is alone.", "Maybe."]
    assert row["answer_label"] == 3 and row["answer"] == "person in the middle is alone."
    assert row["image"] == "movie/a.jpg"


def test_bad_vcr_records_are_rejected_with_reasons(tmp_path):
    boxes = [_box(60, 80), _box(0, 20), _box(30, 40), _box(35, 55)]
    good = _vcr(tmp_path, boxes)
    lines = [
        good,
        {**good, "annot_id": "val-2", "answer_label": 4},
        {**good, "annot_id": "val-3", "answer_choices": []},
        {**good, "annot_id": "val-4", "question": ["Who", "is", [7], "?"]},
        {**good, "annot_id": "val-5", "metadata_fn": "movie/none.json"},
        {**good, "annot_id": "val-6", "img_fn": "movie/none.jpg"},
        {**good, "annot_id": "val-7", "answer_label": -1},
        {k: v for k, v in good.items() if k != "objects"} | {"annot_id": "val-8"},
        good,
    ]
    path = _write(tmp_path / "val.jsonl", lines)
    result = load_questions(path, kind="vcr", image_root=tmp_path / "vcr1images")
    assert list(result.kept["id"]) == ["val-1"]
    assert result.kept.iloc[0]["source"] == "vcr"
    reasons = dict(zip(result.rejects["id"], result.rejects["reason"]))
    assert "answer_label 4 out of range 0..3" in reasons["val-2"] and "0-based" in reasons["val-2"]
    assert "empty choices" in reasons["val-3"]
    assert "names object 7, but there are 4 objects" in reasons["val-4"]
    assert "missing metadata file movie/none.json" in reasons["val-5"]
    assert "missing image file movie/none.jpg" in reasons["val-6"]
    assert "out of range" in reasons["val-7"]
    assert "missing field 'objects'" in reasons["val-8"]
    assert "duplicate id 'val-1'" in reasons["line:9"]
    assert result.counts["in"] == 9 == result.counts["out"] + result.counts["rejected"]


def test_vcr_subset_then_partition_in_file_order(tmp_path):
    boxes = [_box(60, 80), _box(0, 20), _box(30, 40), _box(35, 55)]
    good = _vcr(tmp_path, boxes)
    path = _write(tmp_path / "val.jsonl", [{**good, "annot_id": f"val-{i}"} for i in range(6)])
    subset_file = tmp_path / "subset.yaml"
    subset_file.write_text("- val-5\n- val-1\n- val-3\n- val-99\n")
    subset = read_subset(subset_file)
    result = load_questions(path, kind="vcr", image_root=tmp_path / "vcr1images", subset=subset, partition="1_2")
    assert list(result.kept["id"]) == ["val-3", "val-5"]  # the file's order, not the subset's
    assert result.counts["subset_missing"] == ["val-99"]
    (tmp_path / "bad.yaml").write_text("ids: [1, 2]\n")
    with pytest.raises(QuestionFileError, match="YAML list"):
        read_subset(tmp_path / "bad.yaml")
