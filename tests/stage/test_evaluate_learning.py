"""The benchmark harness reads what a model learned: a tiny LLaVA fine-tuned by groundflow's trainer
(LLaVA-1.5's Vicuna v1 layout) on the drawn yes/no questions scores well above the untrained one
through lmms-eval's llava_hf. A prompt layout at evaluation that differs from training, or an
answer read wrongly, would keep the trained model at chance."""

from __future__ import annotations

import json

from groundflow.cvc.eval_fixture import make_eval_fixture
from groundflow.evaluate.harness import run_benchmark
from groundflow.models.llava import build_tiny_llava
from groundflow.models.spec import ModelSpec
from groundflow.train.config import SFTConfig
from groundflow.train.data import read_records
from groundflow.train.sft import train_sft

# the post-prompt of groundflow_yes_no (tasks/groundflow_yes_no.yaml)
POST_PROMPT = "\nAnswer the question using a single word or phrase."


def test_a_model_trained_on_the_answers_scores_above_the_untrained_one(tmp_path):
    fixture = tmp_path / "fixture"
    make_eval_fixture(fixture, seed=0, n_images=4, include_bad=False)
    questions = [json.loads(line) for line in (fixture / "yes_no.jsonl").read_text().splitlines()]
    records = [{"id": q["question_id"], "image": q["image"], "conversations": [
        {"from": "human", "value": f"<image>\n{q['question']}{POST_PROMPT}"},
        {"from": "gpt", "value": q["answer"].capitalize()}]} for q in questions]
    (tmp_path / "train.json").write_text(json.dumps(records))
    texts = [r["conversations"][0]["value"].replace("<image>\n", "") + " Yes No" for r in records]
    base = build_tiny_llava(tmp_path / "base", seed=0, texts=texts)
    spec = {"path": str(base), "device": "cpu", "dtype": "fp32"}

    config = SFTConfig.from_dict({"learning_rate": 3e-3, "max_steps": 60, "per_device_batch_size": 8,
                                  "max_length": 256, "warmup_ratio": 0.0, "lr_scheduler_type": "constant",
                                  "chat_template": "vicuna_v1", "save_steps": 1000, "report_to": "none"})
    trained = train_sft(model_spec=ModelSpec.from_config(spec), records=read_records(tmp_path / "train.json"),
                        image_root=str(fixture), out_dir=str(tmp_path / "trained"), config=config)

    files = {"test": str(fixture / "yes_no.jsonl")}
    before = run_benchmark(model=spec, task="groundflow_yes_no", data_files=files)
    after = run_benchmark(model={**spec, "path": str(trained)}, task="groundflow_yes_no", data_files=files)
    assert before["n_samples"] == after["n_samples"] == len(questions) == 8
    assert before["metrics"]["pope_accuracy"] <= 0.625
    assert after["metrics"]["pope_accuracy"] >= 0.875, [s["response"] for s in after["samples"]]
