"""groundflow's lmms-eval tasks end to end on a tiny random LLaVA (lmms-eval's llava_hf wrapper,
its simple_evaluate and TaskManager over our task folder), over a few drawn images."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from groundflow.evaluate.harness import TASKS_DIR, run_benchmark
from groundflow.models.llava import build_tiny_llava

POPE_METRICS = {"pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio"}


def _write(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    model = build_tiny_llava(root / "model", seed=0, texts=["Is there a cat in the image? yes no A B C red green"])
    images = root / "images"
    images.mkdir()
    for index in range(4):
        image = Image.new("RGB", (40, 30), (40 * index, 120, 200))
        ImageDraw.Draw(image).ellipse((5 + index, 5, 25, 20), fill=(255, 60 * index, 0))
        image.save(images / f"scene{index}.png")
    yes_no = _write(root / "yes_no.jsonl", [
        {"question_id": f"q{index}", "image": f"images/scene{index}.png",
         "question": f"Is there a {'cat' if index % 2 else 'dog'} in the image?", "answer": "yes" if index % 2 else "no"}
        for index in range(4)])
    choice = _write(root / "choice.jsonl", [
        {"question_id": index, "image": str(images / f"scene{index}.png"), "question": "What colour is the shape?",
         "options": ["red", "green", "blue"], "answer": "ABC"[index % 3]}
        for index in range(4)])
    # "fp32" as configs write it: the harness hands lmms-eval torch's name for it
    return {"model": {"path": str(model), "device": "cpu", "dtype": "fp32"}, "yes_no": yes_no, "choice": choice}


def test_yes_no_task_runs_end_to_end(bench):
    result = run_benchmark(model=bench["model"], task="groundflow_yes_no", tasks_dir=TASKS_DIR,
                           data_files={"test": bench["yes_no"]})
    assert result["task"] == "groundflow_yes_no"
    assert set(result["metrics"]) == POPE_METRICS
    assert all(0.0 <= value <= 1.0 for value in result["metrics"].values())
    assert result["n_samples"] == result["n_records"] == 4 and result["rejects"] == []
    assert sorted(sample["question_id"] for sample in result["samples"]) == ["q0", "q1", "q2", "q3"]
    assert all(isinstance(sample["response"], str) for sample in result["samples"])
    assert all(sample["prediction"] in ("yes", "no") for sample in result["samples"])
    # The aggregate is lmms-eval's POPE accuracy over our per-answer reading.
    correct = [sample["scores"]["correct"] for sample in result["samples"]]
    assert result["metrics"]["pope_accuracy"] == pytest.approx(sum(correct) / len(correct))
    # lmms-eval's pope_yes_ratio is the share of "yes" in the ground truth, not in the answers.
    assert result["metrics"]["pope_yes_ratio"] == pytest.approx(0.5)


def test_multiple_choice_task_runs_end_to_end_with_limit(bench):
    # a pattern names a dataset's shards
    result = run_benchmark(model=bench["model"], task="groundflow_multiple_choice",
                           data_files={"test": str(Path(bench["choice"]).parent / "cho*.jsonl")}, limit=3)
    assert set(result["metrics"]) == {"mc_accuracy", "mc_answered"}
    assert all(0.0 <= value <= 1.0 for value in result["metrics"].values())
    assert result["n_samples"] == 3
    assert [sample["target"] for sample in result["samples"]] == ["A", "B", "C"]
    scores = [sample["scores"]["mc_accuracy"] for sample in result["samples"]]
    assert result["metrics"]["mc_accuracy"] == pytest.approx(sum(scores) / 3)


def test_missing_data_file_named_before_any_model_load(tmp_path):
    missing = tmp_path / "nowhere" / "pope.jsonl"
    # The model path does not exist either: the data file is checked first.
    with pytest.raises(FileNotFoundError, match=str(missing)):
        run_benchmark(model={"path": str(tmp_path / "no-model"), "device": "cpu"}, task="groundflow_yes_no",
                      data_files={"test": missing})


def test_a_pattern_matching_no_file_is_named(tmp_path):
    pattern = tmp_path / "MME" / "data" / "test-*.parquet"
    with pytest.raises(FileNotFoundError, match=re.escape(f"matches {pattern}")):
        run_benchmark(model={"path": str(tmp_path / "no-model"), "device": "cpu"}, task="groundflow_mme",
                      data_files={"test": str(pattern)})


def test_a_task_that_fails_raises(bench, tmp_path):
    broken = tmp_path / "tasks"
    broken.mkdir()
    shutil.copy(TASKS_DIR / "task_utils.py", broken / "task_utils.py")
    text = (TASKS_DIR / "groundflow_yes_no.yaml").read_text()
    text = text.replace("task: groundflow_yes_no", "task: broken_yes_no")
    text = text.replace("task_utils.yes_no_process_results", "task_utils.no_such_scorer")
    (broken / "broken.yaml").write_text(text)
    with pytest.raises(AttributeError, match="no_such_scorer"):
        run_benchmark(model=bench["model"], task="broken_yes_no", tasks_dir=broken, data_files={"test": bench["yes_no"]})
    with pytest.raises(ValueError, match="task 'groundflow_nope' not in"):
        run_benchmark(model=bench["model"], task="groundflow_nope", data_files={"test": bench["yes_no"]})


def test_bad_records_are_rejected_and_the_run_goes_on(bench, tmp_path):
    good = json.loads(bench["yes_no"].read_text().splitlines()[0])
    image = str(bench["yes_no"].parent / good["image"])
    extra = _write(tmp_path / "extra.jsonl", [
        {**good, "question_id": "e1", "image": image},
        {**good, "question_id": "e2", "image": str(tmp_path / "gone.png")},
        {"question_id": "e3", "image": image, "question": "Is there a cat?"},
        {**good, "question_id": "e4", "image": image, "answer": "perhaps"}])
    # a list of files for the split; a judge given to a task scored without one is not used
    result = run_benchmark(model=bench["model"], task="groundflow_yes_no",
                           data_files={"test": [bench["yes_no"], extra]},
                           judge={"base_url": "http://127.0.0.1:9/v1", "served_model": "m", "api_key_env": "NONE"})
    assert result["n_records"] == 8 and result["n_samples"] == 5
    assert result["n_records"] == result["n_samples"] + len(result["rejects"])
    assert sorted(sample["question_id"] for sample in result["samples"]) == ["e1", "q0", "q1", "q2", "q3"]
    assert [(reject["question_id"], reject["line"], reject["file"]) for reject in result["rejects"]] == [
        ("e2", 2, str(extra)), ("e3", 3, str(extra)), ("e4", 4, str(extra))]
    assert [reject["reason"].split(":")[0] for reject in result["rejects"]] == [
        "image not found", "missing field(s) ['answer']", "answer must be 'yes' or 'no', got 'perhaps'"]
    assert result["judge"] is None and result["limit"] is None
    # a file without one good record still stops the run, naming the file, before the model loads
    only_bad = _write(tmp_path / "only_bad.jsonl", [{**good, "image": str(tmp_path / "gone.png")}])
    with pytest.raises(ValueError, match=r"only_bad.jsonl: no usable records; 1 rejected"):
        run_benchmark(model={"path": str(tmp_path / "no-model"), "device": "cpu"}, task="groundflow_yes_no",
                      data_files={"test": [bench["yes_no"], only_bad]})


def test_qwen2_5_vl_checkpoint_runs_through_its_wrapper(bench, tmp_path):
    from groundflow.models.qwen_vl import build_tiny_qwen_vl

    model = build_tiny_qwen_vl(tmp_path / "qwen", seed=0, texts=["Is there a cat in the image? yes no"])
    result = run_benchmark(model={"path": str(model), "device": "cpu"}, task="groundflow_yes_no",
                           data_files={"test": bench["yes_no"]}, limit=2)
    assert set(result["metrics"]) == POPE_METRICS
    assert all(0.0 <= value <= 1.0 for value in result["metrics"].values())
    assert result["n_samples"] == 2
    with pytest.raises(ValueError, match="bfloat16 only"):
        run_benchmark(model={"path": str(model), "device": "cpu", "dtype": "float32"}, task="groundflow_yes_no",
                      data_files={"test": bench["yes_no"]})
