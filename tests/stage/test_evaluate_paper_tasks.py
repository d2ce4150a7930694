"""The paper benchmarks' task YAMLs (lmms-eval's own MME, MMBench, SEED-Bench and MM-Vet utils)
end to end on a tiny random LLaVA, over a few rows made here in each lmms-lab hub dataset's
parquet schema (image columns as datasets.Image, restored from the schema's metadata), the judge
tasks against a fake OpenAI-compatible endpoint in a thread."""

from __future__ import annotations

import io
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image, ImageDraw

from groundflow.evaluate.harness import JUDGE_TASKS, JudgeError, run_benchmark
from groundflow.models.llava import build_tiny_llava

KEY_ENV = "GROUNDFLOW_TEST_JUDGE_KEY"


def _png(index: int) -> dict:
    image = Image.new("RGB", (40, 30), (50 * index, 120, 200))
    ImageDraw.Draw(image).rectangle((5 + index, 5, 25, 20), fill=(255, 60 * index, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _parquet(path, rows: list[dict], features: dict):
    from datasets import Dataset, Features

    Dataset.from_list(rows, features=Features(features)).to_parquet(str(path))
    return path


class FakeJudge:
    """An OpenAI-compatible chat-completions endpoint answering by the prompt's kind: MM-Vet's
    grading prompt gets `grade`, MMBench's matching prompt `letter`, anything else "OK"."""

    def __init__(self):
        self.grade, self.letter = "0.7", "A"
        self.requests: list[dict] = []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                kind = "grade" if "Correctness" in prompt else "match" if "single-choice question" in prompt else "other"
                judge.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                       "model": body.get("model"), "kind": kind})
                content = {"grade": judge.grade, "match": judge.letter}.get(kind, "OK")
                reply = json.dumps({
                    "id": "fake", "object": "chat.completion", "created": 0, "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_kind(self, kind: str) -> list[dict]:
        return [request for request in self.requests if request["kind"] == kind]


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    from datasets import Image as HFImage
    from datasets import List, Value

    root = tmp_path_factory.mktemp("paper")
    model = build_tiny_llava(root / "model", seed=0, texts=["Is there a cat in the image? yes no red green blue"])
    text = Value("string")
    mme_features = {"question_id": text, "image": HFImage(), "question": text, "answer": text, "category": text}
    mme = [_parquet(root / f"mme-{shard}.parquet", [
        {"question_id": f"{category}/0001.png", "image": _png(shard), "category": category,
         "question": "Is there a cat in the image? Please answer yes or no.", "answer": answer}
        for answer in ("Yes", "No")], mme_features)
        for shard, category in enumerate(("existence", "code_reasoning"))]
    mmbench = _parquet(root / "mmbench.parquet", [
        {"index": index, "image": _png(index), "question": "What colour is the shape?", "hint": hint,
         "A": "crimson", "B": "turquoise", "C": "violet", "D": "amber", "answer": answer, "category": "attribute",
         "L2-category": "attribute_reasoning", "source": "fake", "split": "dev", "comment": None}
        for index, (answer, hint) in enumerate([("A", None), ("B", "Look closely."), ("A", None)])],
        {"index": Value("int64"), "question": text, "hint": text, "answer": text, "A": text, "B": text, "C": text,
         "D": text, "category": text, "image": HFImage(), "source": text, "L2-category": text, "comment": text,
         "split": text})
    seed = _parquet(root / "seed.parquet", [
        {"question_id": str(index), "image": [_png(index)] * (2 if data_type == "video" else 1),
         "question": "What is in the image?", "choice_a": "a cat", "choice_b": "a dog", "choice_c": "a car",
         "choice_d": "a tree", "answer": "ABC"[index], "data_type": data_type, "data_id": f"{index}.jpg",
         "question_type_id": 1}
        for index, data_type in enumerate(("image", "video", "image"))],
        {"answer": text, "choice_a": text, "choice_b": text, "choice_c": text, "choice_d": text, "data_id": text,
         "data_type": text, "question": text, "question_id": text, "question_type_id": Value("int16"),
         "image": List(HFImage())})
    mmvet = _parquet(root / "mmvet.parquet", [
        {"question_id": f"v1_{index}", "image": _png(index), "question": "What colour is the shape?",
         "answer": "red<OR>orange", "image_source": "fake", "capability": "rec,spat"}
        for index in range(2)],
        {"question_id": text, "image": HFImage(), "question": text, "answer": text, "image_source": text,
         "capability": text})
    judge = FakeJudge()
    yield {"model": {"path": str(model), "device": "cpu", "dtype": "float32"}, "mme": mme, "mmbench": mmbench,
           "seed": seed, "mmvet": mmvet, "judge": judge}
    judge.server.shutdown()


def _judge(paper, key_env=KEY_ENV):
    return {"base_url": paper["judge"].base_url, "served_model": "gpt-4-0613", "api_key_env": key_env}


def test_mme_over_parquet_shards(paper):
    result = run_benchmark(model=paper["model"], task="groundflow_mme", data_files={"test": paper["mme"]})
    assert set(result["metrics"]) == {"mme_perception_score", "mme_cognition_score"}
    assert result["n_samples"] == result["n_records"] == 4 and result["rejects"] == []
    assert result["judge"] is None
    for metric in result["metrics"]:
        scores = [sample["scores"][metric] for sample in result["samples"] if metric in sample["scores"]]
        assert len(scores) == 2
        # MME's score of one image: accuracy + accuracy+ (both of its questions right), in %
        assert result["metrics"][metric] == pytest.approx(100 * sum(scores) / 2 + 100 * all(scores))


def test_seedbench_scores_image_questions_and_rejects_video_ones(paper):
    result = run_benchmark(model=paper["model"], task="groundflow_seedbench", data_files={"test": paper["seed"]})
    assert set(result["metrics"]) == {"seed_image", "seed_all"}
    assert result["n_records"] == 3 and result["n_samples"] == 2
    assert [(reject["question_id"], reject["line"]) for reject in result["rejects"]] == [("1", 2)]
    assert result["rejects"][0]["reason"].startswith("data_type 'video': not an image question")
    assert sorted(sample["question_id"] for sample in result["samples"]) == ["0", "2"]
    right = [sample["prediction"].lower() == sample["target"].lower() for sample in result["samples"]]
    assert result["metrics"]["seed_image"] == pytest.approx(sum(right) / 2)


def test_mmbench_matches_answers_through_the_judge(paper, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-mmbench-secret")
    judge = paper["judge"]
    judge.requests.clear()
    result = run_benchmark(model=paper["model"], task="groundflow_mmbench_en_dev",
                           data_files={"dev": paper["mmbench"]}, judge=_judge(paper))
    assert set(result["metrics"]) == {"gpt_eval_score"}
    assert result["n_samples"] == result["n_records"] == 3
    assert sorted(sample["question_id"] for sample in result["samples"]) == [0, 1, 2]
    # The tiny model's answers name no option, so each is matched by the judge, which says "A":
    # right for the two questions whose answer is A.
    assert len(judge.of_kind("match")) == 3
    assert result["metrics"]["gpt_eval_score"] == pytest.approx(100 * 2 / 3)
    assert {request["authorization"] for request in judge.requests} == {"Bearer sk-mmbench-secret"}
    assert {request["path"] for request in judge.requests} == {"/v1/chat/completions"}
    assert {request["model"] for request in judge.requests} == {"gpt-4-0613"}
    assert result["judge"] == {"base_url": judge.base_url, "served_model": "gpt-4-0613"}


def test_mmvet_grades_through_the_judge_and_restores_the_environment(paper, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-mmvet-secret")
    monkeypatch.setenv("OPENAI_API_URL", "http://sentinel.invalid/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = paper["judge"]
    judge.requests.clear()
    judge.grade = "0.7"
    result = run_benchmark(model=paper["model"], task="groundflow_mmvet", data_files={"test": paper["mmvet"]},
                           judge=_judge(paper))
    assert set(result["metrics"]) == {"gpt_eval_score"}
    assert result["metrics"]["gpt_eval_score"] == pytest.approx(70.0)
    assert [sample["scores"]["gpt_eval_score"] for sample in result["samples"]] == [0.7, 0.7]
    assert len(judge.of_kind("grade")) == 2
    assert {request["authorization"] for request in judge.requests} == {"Bearer sk-mmvet-secret"}
    # the environment as it was, and lmms-eval's utils forgotten with the key they read
    import os

    assert os.environ["OPENAI_API_URL"] == "http://sentinel.invalid/v1"
    assert "OPENAI_API_KEY" not in os.environ and "MODEL_VERSION" not in os.environ
    assert JUDGE_TASKS["groundflow_mmvet"].module not in sys.modules

    # A grade the judge never gives (an empty answer) is an error, not lmms-eval's silent 0.0;
    # this run's key (another variable) reaches the re-imported utils.
    monkeypatch.setenv("OTHER_JUDGE_KEY", "sk-second")
    judge.requests.clear()
    judge.grade = ""
    with pytest.raises(JudgeError, match="gave no grade for 1 of 1 answers"):
        run_benchmark(model=paper["model"], task="groundflow_mmvet", data_files={"test": paper["mmvet"]},
                      judge=_judge(paper, "OTHER_JUDGE_KEY"), limit=1)
    assert judge.of_kind("grade") and {request["authorization"] for request in judge.requests} == {"Bearer sk-second"}


def test_judge_tasks_fail_before_the_model_loads(paper, tmp_path, monkeypatch):
    nowhere = {"path": str(tmp_path / "no-model"), "device": "cpu"}
    with pytest.raises(JudgeError, match="task groundflow_mmvet is scored by a judge"):
        run_benchmark(model=nowhere, task="groundflow_mmvet", data_files={"test": tmp_path / "none.parquet"})
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeError, match=f"environment variable {KEY_ENV}, which is not set"):
        run_benchmark(model=nowhere, task="groundflow_mmbench_en_dev", data_files={"dev": paper["mmbench"]},
                      judge=_judge(paper))
    monkeypatch.setenv(KEY_ENV, "sk-unreachable-secret")
    with pytest.raises(ValueError, match=r"keys \['timeout_s'\] that lmms-eval's judge utils do not take"):
        run_benchmark(model=nowhere, task="groundflow_mmvet", data_files={"test": paper["mmvet"]},
                      judge={**_judge(paper), "timeout_s": 5})
    # an endpoint that does not answer fails at the check before the model loads
    with pytest.raises(JudgeError, match="did not answer") as error:
        run_benchmark(model=paper["model"], task="groundflow_mmvet", data_files={"test": paper["mmvet"]},
                      judge={**_judge(paper), "base_url": "http://127.0.0.1:9/v1"})
    assert "sk-unreachable-secret" not in str(error.value)


def test_paper_task_files_are_checked_before_the_model_loads(paper, tmp_path):
    from datasets import Value

    nowhere = {"path": str(tmp_path / "no-model"), "device": "cpu"}
    with pytest.raises(FileNotFoundError, match="mme-9.parquet"):
        run_benchmark(model=nowhere, task="groundflow_mme", data_files={"test": [paper["mme"][0], tmp_path / "mme-9.parquet"]})
    with pytest.raises(ValueError, match=r"evaluates split 'test' only; data_files gives \['dev'\]"):
        run_benchmark(model=nowhere, task="groundflow_seedbench", data_files={"dev": paper["seed"]})
    plain = _parquet(tmp_path / "plain.parquet", [{"question_id": "a", "question": "q", "answer": "Yes",
                                                   "category": "count", "image": "a.png"}],
                     {"question_id": Value("string"), "question": Value("string"), "answer": Value("string"),
                      "category": Value("string"), "image": Value("string")})
    with pytest.raises(ValueError, match=r"plain.parquet: column 'image' is .*not an image"):
        run_benchmark(model=nowhere, task="groundflow_mme", data_files={"test": plain})
    with pytest.raises(ValueError, match=r"mmvet.parquet: no column\(s\) \['category'\]"):
        run_benchmark(model=nowhere, task="groundflow_mme", data_files={"test": paper["mmvet"]})
    text_file = tmp_path / "notparquet.parquet"
    text_file.write_text("question_id,answer\n", encoding="utf-8")
    with pytest.raises(ValueError, match="notparquet.parquet: cannot be read as a parquet file"):
        run_benchmark(model=nowhere, task="groundflow_mme", data_files={"test": text_file})
