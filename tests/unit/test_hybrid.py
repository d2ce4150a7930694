"""CVC step T4: sample selection at the boundaries, the hybrid mix, its checks and file forms."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from groundflow.cvc.fixture import _ground_colour, make_fixture, make_instruction_data
from groundflow.cvc.hybrid import (
    HybridFormatError,
    format_counts,
    hybrid_mix,
    llava_record,
    read_llava_json,
    record_problem,
    record_sources,
    records_from_frame,
    select_samples,
    to_parquet_frame,
    validate_records,
    write_llava_json,
)
from groundflow.io import atomic_path, check_accounting, read_table, write_table

QUESTION = "What might the object occluded by the gray blocks be?"
COT_HUMAN = (
    "<image>\nWhat might the object occluded by the gray blocks be? Please provide your reasoning "
    "process and confirm a unique answer. Let's think step by step."
)
ANSWER_HUMAN = "<image>\nWhat might the object occluded by the gray blocks be? Please confirm a unique answer."


def _instance(record_id: str, label: str, k: int, answers: list[str] | None = None) -> dict:
    """16 trials, the first k correct; correct trials predict `answers` in turn (default: label)."""
    answers = answers or [label]
    correct = [i < k for i in range(16)]
    return {
        "id": record_id,
        "label": label,
        "instruction": QUESTION,
        "occluded_image": f"occluded/0/{record_id}.jpg",
        "trials": [f"{record_id} rationale {i}" for i in range(16)],
        "predictions": [answers[i % len(answers)] if ok else "wrong" for i, ok in enumerate(correct)],
        "similarities": [0.9 if ok else 0.2 for ok in correct],
        "correct": correct,
        "n_correct": k,
    }


def _checked() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _instance("s0-kite", "kite", 0),
            _instance("s1-car", "car", 1),
            _instance("s2-cup", "cup", 4, ["cup", "mug", "cup", "cup"]),
            _instance("s3-tree", "tree", 5),
            _instance("s4-sun", "sun", 16, ["sun", "suns"]),
        ]
    )


def test_select_samples_at_the_boundaries():
    df = _checked()
    cot, answers, result = select_samples(df, image_prefix="cvc/")
    assert check_accounting("selection", df["id"], result) == {"stage": "selection", "in": 5, "out": 4, "rejected": 1}
    assert list(result.rejects["stage"]) == ["selection"]
    assert list(result.rejects["reason"]) == ["no correct trial (0 of 16) for 'kite' (best similarity 0.200)"]
    # k = 1 and 4 give CoT samples; k = 5 and 16 answer samples only
    assert [r["id"] for r in cot] == ["s1-car-cot-0", "s2-cup-cot-0", "s2-cup-cot-1", "s2-cup-cot-2", "s2-cup-cot-3"]
    assert [r["conversations"][1]["value"] for r in cot[1:]] == [f"s2-cup rationale {i}" for i in range(4)]
    # distinct correct predictions, in order of first appearance
    assert [(r["id"], r["conversations"][1]["value"]) for r in answers] == [
        ("s1-car-answer-0", "car"),
        ("s2-cup-answer-0", "cup"), ("s2-cup-answer-1", "mug"),
        ("s3-tree-answer-0", "tree"),
        ("s4-sun-answer-0", "sun"), ("s4-sun-answer-1", "suns"),
    ]
    assert cot[0] == {
        "id": "s1-car-cot-0",
        "image": "cvc/occluded/0/s1-car.jpg",
        "conversations": [{"from": "human", "value": COT_HUMAN}, {"from": "gpt", "value": "s1-car rationale 0"}],
    }
    assert answers[0] == {
        "id": "s1-car-answer-0",
        "image": "cvc/occluded/0/s1-car.jpg",
        "conversations": [{"from": "human", "value": ANSWER_HUMAN}, {"from": "gpt", "value": "car"}],
    }
    kept = result.kept.set_index("id")
    assert kept["n_cot"].to_dict() == {"s1-car": 1, "s2-cup": 4, "s3-tree": 0, "s4-sun": 0}
    assert kept["n_answer"].to_dict() == {"s1-car": 1, "s2-cup": 2, "s3-tree": 1, "s4-sun": 2}
    validate_records(cot, what="cot", strict=True)
    validate_records(answers, what="answer", strict=True)


def test_select_samples_cot_range_collisions_and_consistency():
    df = _checked()
    cot, _, result = select_samples(df, cot_range=(1, 16))
    assert len(cot) == 1 + 4 + 5 + 16 and cot[0]["image"] == "occluded/0/s1-car.jpg"
    # the same occluded stem under another folder would give the same sample ids
    twin = pd.DataFrame([_instance("s1-car", "car", 2) | {"id": "other", "occluded_image": "occluded/1/s1-car.jpg"}])
    both = pd.concat([df, twin], ignore_index=True)
    _, answers, result = select_samples(both)
    check_accounting("selection", both["id"], result)
    assert result.rejects.set_index("id")["reason"]["other"] == (
        "sample ids of 'other' would repeat those of 's1-car' (same occluded image stem 's1-car')")
    no_answer = pd.DataFrame([_instance("s9-box", "box", 0) | {"similarities": [float("nan")] * 16}])
    assert select_samples(no_answer)[2].rejects["reason"][0] == "no correct trial (0 of 16) for 'box' (no answer extracted)"
    with pytest.raises(ValueError, match="n_correct=3 but 1 trials"):
        select_samples(pd.DataFrame([_instance("x", "x", 1) | {"n_correct": 3}]))
    with pytest.raises(ValueError, match="cot_range"):
        select_samples(df, cot_range=(0, 4))


def test_select_samples_reads_parquet_round_tripped_rows(tmp_path):
    df = _checked()
    write_table(df, tmp_path / "checked.parquet")
    back = read_table(tmp_path / "checked.parquet")
    assert select_samples(back)[:2] == select_samples(df)[:2]


def _instruction_data() -> list[dict]:
    return [
        llava_record("coco-1", "coco/train2017/1.jpg", "What is this?", "A cat."),
        {"id": "text-1", "model": "", "conversations": [
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
        # as in the real 665k: token after the question, first turn from gpt, a repeated id
        {"id": "coco-2", "image": "coco/2.jpg", "conversations": [
            {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Count them.\n<image>"},
            {"from": "gpt", "value": "Three."}]},
        llava_record("coco-1", "coco/train2017/1.jpg", "And the colour?", "Black."),
    ]


def test_hybrid_mix_order_shuffle_and_counts():
    cot, answers, selection = select_samples(_checked())
    instruction = _instruction_data()
    mix = hybrid_mix(instruction, cot, answers)
    assert mix == [*instruction, *cot, *answers]
    shuffled = hybrid_mix(instruction, cot, answers, shuffle_seed=3)
    assert shuffled == hybrid_mix(instruction, cot, answers, shuffle_seed=3)
    assert shuffled != mix and sorted(map(json.dumps, shuffled)) == sorted(map(json.dumps, mix))
    assert format_counts(instruction, cot, answers, selection) == {
        "instruction": 4, "instruction_text_only": 1, "cot": 5, "answer": 6, "total": 15,
        "instances_kept": 4, "instances_rejected": 1, "instances_with_cot": 2, "instances_answer_only": 2,
    }
    assert format_counts([], [], []) == {"instruction": 0, "instruction_text_only": 0, "cot": 0, "answer": 0, "total": 0}


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"id": "a", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\n<image>\nq"},
                                                        {"from": "gpt", "value": "a"}]},
         "has an image but 2 <image> tokens (needs exactly 1)"),
        ({"id": "a", "image": "x.jpg", "conversations": [{"from": "human", "value": "q"},
                                                        {"from": "gpt", "value": "<image>"}]},
         "the <image> token is in a gpt turn"),
        ({"id": "a", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
         "has no image but 1 <image> tokens"),
        ({"id": "", "conversations": []}, "missing or empty id"),
        ({"id": "a", "image": "", "conversations": []}, "image must be a non-empty string, got ''"),
        ({"id": "a", "conversations": []}, "conversations must be a non-empty list"),
        ({"id": "a", "conversations": [{"from": "user", "value": "q"}]},
         "turn 0 must be {from: human|gpt, value: string}, got {'from': 'user', 'value': 'q'}"),
        ({"id": "a", "conversations": [{"from": "human", "value": "q"}]}, "needs a human and a gpt turn, has ['human']"),
        ("text", "not an object but str"),
    ],
)
def test_record_problems(record, problem):
    assert record_problem(record) == problem


def test_hybrid_mix_names_the_bad_record():
    cot, answers, _ = select_samples(_checked())
    instruction = _instruction_data()
    bad = [*instruction, {"id": "broken", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                              {"from": "gpt", "value": "a"}]}]
    with pytest.raises(HybridFormatError, match=r"instruction record 4 \(id 'broken'\): has no image but 1"):
        hybrid_mix(bad, cot, answers)
    empty = [dict(answers[0], conversations=[answers[0]["conversations"][0], {"from": "gpt", "value": " "}])]
    with pytest.raises(HybridFormatError, match=r"answer record 0 \(id 's1-car-answer-0'\): empty gpt turn"):
        hybrid_mix(instruction, cot, empty)
    trailing = [dict(cot[0], conversations=[{"from": "human", "value": "q\n<image>"}, cot[0]["conversations"][1]])]
    with pytest.raises(HybridFormatError, match="must open with"):
        hybrid_mix(instruction, trailing, [])
    with pytest.raises(HybridFormatError, match="'s1-car-cot-0' repeats a cot sample id"):
        hybrid_mix(instruction, [cot[0], cot[0]], [])
    with pytest.raises(HybridFormatError, match="'coco-1' already occurs in the instruction data"):
        hybrid_mix(instruction, [], [dict(answers[0], id="coco-1")])


def test_parquet_and_json_round_trips(tmp_path):
    cot, answers, _ = select_samples(_checked())
    instruction = _instruction_data() + [{"id": 7, "conversations": [{"from": "human", "value": "é?"},
                                                                     {"from": "gpt", "value": "ü"}]}]
    mix = hybrid_mix(instruction, cot, answers, shuffle_seed=0)
    sources = record_sources(mix, cot, answers)
    frame = to_parquet_frame(mix, sources)
    assert list(frame.columns) == ["id", "id_is_int", "image", "conversations", "n_turns", "source", "extra"]
    assert frame["source"].value_counts().to_dict() == {"instruction": 5, "answer": 6, "cot": 5}
    write_table(frame, tmp_path / "hybrid.parquet")
    back = read_table(tmp_path / "hybrid.parquet")
    assert records_from_frame(back) == mix
    text_only = back[back["id"] == "text-1"].iloc[0]
    assert pd.isna(text_only["image"]) and json.loads(text_only["extra"]) == {"model": ""}
    assert json.loads(back[back["id"] == "s1-car-cot-0"].iloc[0]["conversations"])[0]["value"] == COT_HUMAN

    write_llava_json(mix, tmp_path / "hybrid.json")
    assert read_llava_json(tmp_path / "hybrid.json") == mix
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="unknown sources"):
        to_parquet_frame(mix[:1], ["mixed"])


def test_ground_colour_of_a_drawn_scene_survives_jpeg(tmp_path):
    for rgb, name in (((90, 170, 80), "green"), ((200, 180, 120), "sandy yellow"), ((110, 150, 200), "blue")):
        pixels = np.zeros((40, 30, 3), dtype=np.uint8)
        pixels[:20] = (120, 170, 240)
        pixels[20:] = rgb
        pixels[35:, :10] = (215, 40, 40)  # an object on the bottom row, in the minority
        with atomic_path(tmp_path / "g.jpg") as tmp:
            Image.fromarray(pixels).save(tmp, format="JPEG", quality=90)
        assert _ground_colour(np.asarray(Image.open(tmp_path / "g.jpg").convert("RGB"))) == name


def test_instruction_data_fixture_is_valid_llava_and_deterministic(tmp_path):
    summary = make_fixture(tmp_path / "fx", seed=0, n_images=4, include_bad=False)
    out = tmp_path / "instruct.json"
    info = make_instruction_data(out, summary["image_root"], n=8, seed=0)
    records = read_llava_json(out)
    assert info["n_records"] == len(records) == 8 and info["n_text_only"] == 1 and info["n_multi_turn"] == 1
    validate_records(records, what="instruction")
    text_only = [r for r in records if "image" not in r]
    assert text_only[0]["model"] == "" and "<image>" not in json.dumps(text_only)
    with_images = [r for r in records if "image" in r]
    assert all((tmp_path / "fx" / "images" / r["image"]).is_file() for r in with_images)
    assert set(info["images"]) <= {f"scene_{i:04d}.{'png' if i % 3 == 0 else 'jpg'}" for i in range(4)}
    firsts = [r["conversations"][0]["value"] for r in with_images]
    assert sum(v.endswith("\n<image>") for v in firsts) == 1 and sum(v.startswith("<image>\n") for v in firsts) == 6
    assert len({r["id"] for r in records}) == 8
    again = make_instruction_data(tmp_path / "again.json", summary["image_root"], n=8, seed=0)
    assert (tmp_path / "again.json").read_bytes() == out.read_bytes() and again["images"] == info["images"]
    make_instruction_data(tmp_path / "other.json", summary["image_root"], n=8, seed=1)
    assert (tmp_path / "other.json").read_bytes() != out.read_bytes()
    # the mix takes it as is
    cot, answers, _ = select_samples(_checked())
    assert len(hybrid_mix(records, cot, answers)) == 8 + 5 + 6
    prefixed = make_instruction_data(tmp_path / "prefixed.json", summary["image_root"], n=8, seed=0, image_prefix="fx/images/")
    assert prefixed["images"] == [f"fx/images/{name}" for name in info["images"]]
    assert all((tmp_path / r["image"]).is_file() for r in read_llava_json(tmp_path / "prefixed.json") if "image" in r)
    with pytest.raises(ValueError, match="n must be >= 3"):
        make_instruction_data(tmp_path / "x.json", summary["image_root"], n=2)
