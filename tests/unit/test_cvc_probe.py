"""The CVC held-out probe's pure core on fake generators and embedders: picture identity, the split
by picture, the prompt, answering, scoring and the result's shape."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from groundflow.cvc.hybrid import answer_question
from groundflow.cvc.probe import (
    FRACTION_KEY,
    UNSEEN_KEY,
    answer_probe,
    image_key,
    instruction_data_images,
    optional_path,
    probe_metrics,
    probe_prompt,
    probe_report,
    read_probe_instances,
    split_probe,
    split_probe_files,
)
from groundflow.cvc.prompts import ANSWER_SUFFIX, REASONING_SUFFIX
from groundflow.cvc.trials import check_answers, parse_short_answer
from groundflow.generate.backends import SamplingParams
from groundflow.io import check_accounting, read_table, write_table

QUESTION = (
    "In the given image, there is an object heavily occluded by a cluster of gray blocks. "
    "Please answer the following question.\nWhat might the object occluded by the gray blocks be?"
)
GREEDY = SamplingParams(max_new_tokens=16, n=1, do_sample=False)


class FakeGenerator:
    """Answers each prompt with `answer(prompt)`; records every call."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def generate(self, prompts, params):
        prompts = list(prompts)
        self.calls.append((prompts, params))
        return [[self.answer(p)] for p in prompts]

    def describe(self):
        return {"backend": "fake"}


class FakeEmbedder:
    """One axis per known word (unit vectors); anything else on the last axis."""

    WORDS = ["kite", "car", "cup", "tree"]

    def encode(self, texts):
        rows = np.zeros((len(texts), len(self.WORDS) + 1), dtype=np.float32)
        for row, text in enumerate(texts):
            rows[row, self.WORDS.index(text) if text in self.WORDS else -1] = 1.0
        return rows

    def describe(self):
        return {"backend": "fake"}


# --- picture identity ----------------------------------------------------------------------------


def test_image_key_identifies_a_coco_picture_across_file_names():
    keys = {image_key(p) for p in ("COCO_train2014_000000391895.jpg", "000000391895.jpg",
                                   "coco/train2017/000000391895.jpg", "images/COCO_val2014_000000391895.png",
                                   "C:\\data\\COCO_train2014_000000391895.jpg")}
    assert keys == {"000000391895"}
    # Unpadded numbers (Visual Genome, GQA in LLaVA-665k) are other pictures: zeros are not stripped.
    assert image_key("vg/VG_100K/2345.jpg") != image_key("COCO_train2014_000000002345.jpg")
    assert image_key("scene_0000.png") == image_key("sub/scene_0000.jpg") == "scene_0000"
    assert image_key("COCO_file.jpg") == "COCO_file"  # not a COCO split prefix
    with pytest.raises(ValueError, match="no file name"):
        image_key("COCO_train2014_.jpg")


def test_instruction_data_images_skips_text_only_records_and_names_a_bad_one():
    records = [
        {"id": "a", "image": "coco/train2017/000000391895.jpg", "conversations": []},
        {"id": "t", "conversations": []},  # text-only
        {"id": "m", "image": ["scene_0001.png", "gqa/images/77.jpg"], "conversations": []},
    ]
    assert instruction_data_images(records) == {"000000391895", "scene_0001", "77"}
    with pytest.raises(ValueError, match=r"record 1 \(id 'b'\): image must be"):
        instruction_data_images([records[0], {"id": "b", "image": 7}])


# --- the split -----------------------------------------------------------------------------------


def _instances(n_images: int, per_image: int = 2, prefix: str = "COCO_train2014_") -> pd.DataFrame:
    rows = [
        {"id": f"{prefix}{i:012d}-obj{j}", "image": f"{prefix}{i:012d}.jpg", "label": f"obj{j}"}
        for i in range(n_images) for j in range(per_image)
    ]
    return pd.DataFrame(rows)


def _sides(trial, probe) -> dict[str, str]:
    return {**{i: "trial" for i in trial["id"]}, **{i: "probe" for i in probe["id"]}}


def test_split_is_by_picture_deterministic_and_independent_of_shards_and_order():
    instances = _instances(300, per_image=3)
    trial, probe, counts = split_probe(instances, fraction=0.3, seed=7, exclude=set())
    assert counts["in"] == 900 == counts["trial"] + counts["probe"] == len(trial) + len(probe)
    assert counts["images"] == 300 == counts["trial_images"] + counts["probe_images"]
    assert counts["probe"] == 3 * counts["probe_images"]
    # every instance of a picture on one side
    assert not set(trial["image"]) & set(probe["image"])
    # about the fraction of the pictures (binomial 300 x 0.3: sd ~8)
    assert 60 <= counts["probe_images"] <= 120
    # columns and order kept
    assert list(probe.columns) == list(instances.columns)
    assert list(probe["id"]) == [i for i in instances["id"] if i in set(probe["id"])]

    sides = _sides(trial, probe)
    shuffled = instances.sample(frac=1.0, random_state=3)
    assert _sides(*split_probe(shuffled, fraction=0.3, seed=7, exclude=set())[:2]) == sides
    # sharded differently (any partition): each shard's split agrees with the whole's
    by_shard = {}
    for bounds in np.array_split(np.arange(len(shuffled)), 4):
        shard = shuffled.iloc[bounds]
        by_shard.update(_sides(*split_probe(shard, fraction=0.3, seed=7, exclude=set())[:2]))
    assert by_shard == sides
    # the same picture under its train2017 name goes the same way
    renamed = instances.assign(image=instances["image"].str.replace("COCO_train2014_", "train2017/", regex=False))
    assert _sides(*split_probe(renamed, fraction=0.3, seed=7, exclude=set())[:2]) == sides
    # another seed, another split
    assert _sides(*split_probe(instances, fraction=0.3, seed=8, exclude=set())[:2]) != sides


def test_split_fraction_bounds_and_bad_input():
    instances = _instances(20)
    trial, probe, counts = split_probe(instances, fraction=0, seed=0, exclude=set())
    assert probe.empty and len(trial) == 40 and counts["probe"] == 0 and list(probe.columns) == list(instances.columns)
    trial, probe, counts = split_probe(instances, fraction=1.0, seed=0, exclude=set())
    assert trial.empty and counts["probe_images"] == 20
    for bad in (-0.1, 1.5, True, "0.2"):
        with pytest.raises(ValueError, match=FRACTION_KEY.replace(".", r"\.")):
            split_probe(instances, fraction=bad, seed=0, exclude=set())
    broken = instances.copy()
    broken.loc[3, "image"] = None
    with pytest.raises(ValueError, match=f"instance '{broken.loc[3, 'id']}': no source image"):
        split_probe(broken, fraction=0.5, seed=0, exclude=set())


def test_pictures_seen_in_the_instruction_data_stay_on_the_trial_side():
    instances = _instances(40)
    seen = {image_key(p) for p in instances["image"].unique()[::4]}  # 10 of the 40 pictures
    trial, probe, counts = split_probe(instances, fraction=1.0, seed=0, exclude=seen | {"elsewhere"})
    assert not {image_key(p) for p in probe["image"]} & seen
    assert {image_key(p) for p in trial["image"]} == seen
    assert (counts["excluded_images"], counts["excluded_instances"], counts["probe_images"]) == (10, 20, 30)
    # exclusion only removes pictures from the probe side; the others keep their side
    _, free_probe, _ = split_probe(instances, fraction=0.5, seed=4, exclude=set())
    _, kept_probe, _ = split_probe(instances, fraction=0.5, seed=4, exclude=seen)
    assert set(kept_probe["id"]) == {i for i, p in zip(free_probe["id"], free_probe["image"])
                                     if image_key(p) not in seen}


def test_split_files_read_the_instruction_data_and_count(tmp_path):
    instances = _instances(12)
    write_table(instances, tmp_path / "records.parquet")
    data = [{"id": "x", "image": "coco/train2017/000000000003.jpg", "conversations": []},
            {"id": "t", "conversations": []}]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    outs = {"trial_out": str(tmp_path / "trial.parquet"), "probe_out": str(tmp_path / "probe.parquet"),
            "counts_out": str(tmp_path / "counts.json")}
    counts = split_probe_files(records=str(tmp_path / "records.parquet"), instruction_data=str(tmp_path / "llava.json"),
                               fraction=1.0, seed=0, unseen_by_instruction_data=True, **outs)
    probe, trial = read_table(outs["probe_out"]), read_table(outs["trial_out"])
    assert list(trial["id"]) == ["COCO_train2014_000000000003-obj0", "COCO_train2014_000000000003-obj1"]
    assert len(probe) == 22 and json.loads((tmp_path / "counts.json").read_text()) == counts
    assert (counts["in"], counts["trial"], counts["probe"], counts["instruction_data_images"]) == (24, 2, 22, 1)
    # not asked to exclude: the instruction data is not read at all
    counts = split_probe_files(records=str(tmp_path / "records.parquet"), instruction_data=str(tmp_path / "nowhere.json"),
                               fraction=1.0, seed=0, unseen_by_instruction_data=False, **outs)
    assert counts["probe"] == 24 and counts["excluded_images"] == 0
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "b", "image": ""}]))
    with pytest.raises(ValueError, match="bad.json.*id 'b'"):
        split_probe_files(records=str(tmp_path / "records.parquet"), instruction_data=str(tmp_path / "bad.json"),
                          fraction=1.0, seed=0, unseen_by_instruction_data=True, **outs)


def test_optional_path():
    assert optional_path([]) is None and optional_path(None) is None
    assert optional_path("a.json") == "a.json" and optional_path(["a.json"]) == "a.json"
    with pytest.raises(ValueError, match="one path or none"):
        optional_path(["a", "b"])


def test_an_empty_probe_names_the_config_keys(tmp_path):
    write_table(_instances(2).iloc[0:0], tmp_path / "0.parquet")
    with pytest.raises(ValueError, match=f"{FRACTION_KEY}.*{UNSEEN_KEY}"):
        read_probe_instances([tmp_path / "0.parquet"])


# --- asking and scoring ----------------------------------------------------------------------------


def test_probe_prompt_is_the_hybrid_answer_samples_human_turn():
    image = Image.new("RGB", (4, 4))
    prompt = probe_prompt(QUESTION + " " + REASONING_SUFFIX, image)
    content = prompt.messages[0]["content"]
    assert prompt.messages[0]["role"] == "user" and prompt.image is image
    assert content == answer_question(QUESTION) == QUESTION + " " + ANSWER_SUFFIX
    assert REASONING_SUFFIX not in content and content.count(ANSWER_SUFFIX) == 1


def _occluded(tmp_path) -> pd.DataFrame:
    folder = tmp_path / "occluded" / "0"
    folder.mkdir(parents=True)
    for stem, colour in (("scene_0000-kite", (200, 0, 0)), ("scene_0001-car", (0, 200, 0)),
                         ("scene_0003-tree", (0, 0, 200))):
        Image.new("RGB", (12, 10), colour).save(folder / f"{stem}.jpg")
    (folder / "scene_0002-cup.jpg").write_bytes(b"not a jpeg")
    stems = ["scene_0000-kite", "scene_0001-car", "scene_0002-cup", "scene_0003-tree"]
    return pd.DataFrame({"id": stems, "image": [f"{s.split('-')[0]}.png" for s in stems],
                         "label": [s.split("-")[1] for s in stems],
                         "occluded_image": [f"occluded/0/{s}.jpg" for s in stems], "instruction": [QUESTION] * 4})


LABEL_OF_COLOUR = {(200, 0, 0): "kite", (0, 200, 0): "car", (0, 0, 200): "tree"}


def _names_the_label(prompt):
    red, green, blue = prompt.image.getpixel((5, 5))
    colour = min(LABEL_OF_COLOUR, key=lambda c: sum(abs(a - b) for a, b in zip(c, (red, green, blue))))
    return f"The answer is a {LABEL_OF_COLOUR[colour]}."


def test_answer_probe_one_call_one_greedy_answer_and_unreadable_images_rejected(tmp_path):
    instances = _occluded(tmp_path)
    generator = FakeGenerator(_names_the_label)
    result = answer_probe(instances, generator, GREEDY, image_dir=tmp_path)
    assert check_accounting("probe_answers", instances["id"], result) == {
        "stage": "probe_answers", "in": 4, "out": 3, "rejected": 1}
    assert len(generator.calls) == 1 and generator.calls[0][1] is GREEDY and len(generator.calls[0][0]) == 3
    assert generator.calls[0][0][0].messages[0]["content"] == answer_question(QUESTION)
    assert list(result.kept["response"]) == ["The answer is a kite.", "The answer is a car.", "The answer is a tree."]
    assert [list(p) for p in result.kept["predictions"]] == [["kite"], ["car"], ["tree"]]
    assert result.rejects.loc[0, "id"] == "scene_0002-cup"
    assert result.rejects.loc[0, "reason"].startswith("occluded image of 'scene_0002-cup': unreadable image")
    for params in (SamplingParams(max_new_tokens=8, n=2), SamplingParams(max_new_tokens=8, do_sample=True)):
        with pytest.raises(ValueError, match="one greedy answer"):
            answer_probe(instances, generator, params, image_dir=tmp_path)


def _score(instances, generator, tmp_path):
    answered = answer_probe(instances, generator, GREEDY, image_dir=tmp_path)
    checked = check_answers(answered.kept, FakeEmbedder(), threshold=0.85).kept
    return probe_report(checked, answered.rejects, model="tiny", n_records=len(instances),
                        produced_by={"embedder": {"backend": "fake"}})


def test_a_model_naming_the_label_scores_1_and_one_naming_another_object_0(tmp_path):
    instances = _occluded(tmp_path)
    result, answers = _score(instances, FakeGenerator(_names_the_label), tmp_path)
    assert result["metrics"] == {"probe_accuracy": 1.0, "probe_similarity": pytest.approx(1.0), "n": 3}
    assert (result["task"], result["model"], result["n_samples"], result["n_records"]) == ("cvc_probe", "tiny", 3, 4)
    assert result["rejects"] == [{"stage": "probe_answers", "id": "scene_0002-cup",
                                  "reason": result["rejects"][0]["reason"]}]
    assert result["samples"][0] == {"doc_id": 0, "question_id": "scene_0000-kite", "target": "kite",
                                    "response": "The answer is a kite.", "prediction": "kite",
                                    "scores": {"correct": 1.0, "similarity": pytest.approx(1.0)}}
    assert list(answers.columns) == ["id", "image", "label", "occluded_image", "instruction", "response",
                                     "prediction", "similarity", "correct"]
    assert answers["correct"].tolist() == [True, True, True]
    json.dumps(result, allow_nan=False)  # plain JSON

    wrong, _ = _score(instances, FakeGenerator(lambda p: "Answer: a cup"), tmp_path)
    assert wrong["metrics"] == {"probe_accuracy": 0.0, "probe_similarity": pytest.approx(0.0), "n": 3}
    assert {s["prediction"] for s in wrong["samples"]} == {"cup"}
    assert all(s["scores"]["correct"] == 0.0 for s in wrong["samples"])


def test_an_empty_answer_is_wrong_and_counts_as_similarity_0(tmp_path):
    instances = _occluded(tmp_path).iloc[[0, 1]]
    responses = iter(["", "a car"])
    result, answers = _score(instances, FakeGenerator(lambda p: next(responses)), tmp_path)
    assert result["metrics"] == {"probe_accuracy": 0.5, "probe_similarity": pytest.approx(0.5), "n": 2}
    assert result["samples"][0]["prediction"] == "" and result["samples"][0]["scores"] == {"correct": 0.0,
                                                                                          "similarity": None}
    assert math.isnan(answers.loc[0, "similarity"])
    json.dumps(result, allow_nan=False)


def test_probe_metrics_and_report_refuse_what_does_not_add_up():
    with pytest.raises(ValueError, match="no checked probe instances"):
        probe_metrics(pd.DataFrame({"similarities": [], "n_correct": []}))
    checked = pd.DataFrame({"id": ["a"], "label": ["kite"], "response": ["kite"], "predictions": [["kite"]],
                            "similarities": [[1.0, 0.2]], "n_correct": [1]})
    with pytest.raises(ValueError, match="one answer, found 2"):
        probe_metrics(checked)
    checked["similarities"] = [[1.0]]
    with pytest.raises(ValueError, match="1 answered \\+ 0 rejected != 2"):
        probe_report(checked, pd.DataFrame(columns=["stage", "id", "reason"]), model="m", n_records=2)
    assert parse_short_answer("The answer is a kite.") == "kite"


def test_evaluate_probe_frees_the_generator_before_the_embedder_loads(tmp_path, monkeypatch):
    import contextlib
    import weakref

    import groundflow.embed
    import groundflow.generate.backends
    from groundflow.cvc.probe import evaluate_probe

    alive = []

    @contextlib.contextmanager
    def fake_open_generator(spec, *, kind, server_log=None):
        assert kind == "vision" and spec["model"]["path"] == "ckpt"
        generator = FakeGenerator(_names_the_label)
        alive.append(weakref.ref(generator))
        yield generator

    def fake_load_embedder(spec, *, batch_size):
        assert alive and alive[0]() is None, "the generator is still alive when the embedder loads"
        assert batch_size == 3
        return FakeEmbedder()

    monkeypatch.setattr(groundflow.generate.backends, "open_generator", fake_open_generator)
    monkeypatch.setattr(groundflow.embed, "load_embedder", fake_load_embedder)
    instances = _occluded(tmp_path)
    result, answers = evaluate_probe(
        instances, generation={"backend": "hf", "model": {"path": "ckpt"}}, embedder={"path": "e"},
        opts={"threshold": 0.85, "batch_size": 3, "max_new_tokens": 8, "chunk_size": 2}, image_dir=tmp_path,
        progress_dir=str(tmp_path / ".progress"))
    assert result["model"] == "ckpt" and result["metrics"]["probe_accuracy"] == 1.0
    assert (result["n_records"], result["n_samples"], len(result["rejects"])) == (4, 3, 1)
    assert result["produced_by"]["sampling"]["do_sample"] is False and result["produced_by"]["threshold"] == 0.85
    assert list(answers["id"]) == ["scene_0000-kite", "scene_0001-car", "scene_0003-tree"]
