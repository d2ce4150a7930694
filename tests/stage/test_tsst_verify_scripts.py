"""TSST verification, round data and evaluation scripts as Snakemake runs them
(tests/stage/script_harness.py): search chains judged through an OpenAI-compatible judge (the fake
server of tests/data, answering as a judge would), the verdict cache on a re-run, an unreachable
judge, D+/D_v files with accumulation, direct answers of a tiny random LLaVA, and the eval table."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from groundflow.generate.backends import SamplingParams, make_generator
from groundflow.io.artifacts import read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.models.llava import build_tiny_llava
from groundflow.tsst.prompts import CONVERSATION_FORMAT, load_question_prompts
from groundflow.tsst.verify import direct_prompt
from script_harness import FakeSnakemake, run_script

FAKE_SERVER = Path(__file__).resolve().parents[1] / "data" / "fake_openai_server.py"
KEY_ENV = "GROUNDFLOW_TEST_JUDGE_KEY"


def _load_fake_server():
    spec = importlib.util.spec_from_file_location("fake_openai_server", FAKE_SERVER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_openai_server"] = module
    spec.loader.exec_module(module)
    return module


fake = _load_fake_server()


class JudgeServer(fake.FakeOpenAIServer):
    """Answers our judge prompt as a judge would: True when the response contains the correct text."""

    def _texts(self, payload):
        text = fake.last_user_text(payload["messages"])
        correct = re.search(r"Correct Answer: [A-Z]\. (.*)", text).group(1).strip().lower()
        response = re.search(r"Provided Response: (.*)", text).group(1).lower()
        return ["True." if correct in response else "False, it names another option."]


def judge_server(**behaviour):
    return JudgeServer(fake.FakeServerBehaviour(api_key="sk-judge-test", **behaviour))


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-judge-test")


def judge_spec(server):
    return {"backend": "openai", "base_url": server.base_url, "served_model": "judge-70b", "api_key_env": KEY_ENV,
            "max_retries": 1, "backoff_s": 0.01, "timeout_s": 30}


QUESTIONS = pd.DataFrame([
    {"id": "q1", "source": "fixture", "question": "What shape is red?", "choices": ["circle", "square", "star"],
     "answer_label": 1, "answer": "circle", "image": "scene1.png"},
    {"id": "q2", "source": "fixture", "question": "How many sides has a square?", "choices": ["three", "four"],
     "answer_label": 2, "answer": "four", "image": None},
    {"id": "q3", "source": "fixture", "question": "What colour is the star?", "choices": ["blue", "green"],
     "answer_label": 2, "answer": "green", "image": "scene2.png"},
    {"id": "q4", "source": "fixture", "question": "Is the circle big?", "choices": ["yes", "no"],
     "answer_label": 1, "answer": "yes", "image": "missing.png"},
])


def chain(text, score, end="final_answer"):
    return {"text": text, "score": score, "end": end}


SEARCH = pd.DataFrame([
    {"id": "q1", "chains": [chain("The red shape is round. Final Answer: A.", 0.9),  # regex, right
                            chain("It has corners. Final Answer: the square shape", 0.4),  # judge, wrong
                            chain("It is round. Final Answer: a red circle", 0.2)],  # judge, right
     "rounds": 3, "restarts": 0, "policy_calls": 3, "value_calls": 9},
    {"id": "q2", "chains": [chain("A square has four sides. Final Answer: four", 0.8),  # match, right
                            chain("Final Answer: C", 0.1)]},  # regex: no option C -> judge, wrong
    {"id": "q3", "chains": []},  # the search finished nothing
    {"id": "q9", "chains": [chain("Final Answer: A", 0.5)]},  # not in the question table
])
for column, value in (("rounds", 2), ("restarts", 0), ("policy_calls", 2), ("value_calls", 4)):
    SEARCH[column] = SEARCH[column].fillna(value).astype("int64")


@pytest.fixture
def tables(tmp_path):
    write_table(QUESTIONS, tmp_path / "questions.parquet", schema=table_schema("tsst_questions"))
    write_table(SEARCH, tmp_path / "search.parquet")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(images / "scene1.png")
    Image.new("RGB", (30, 30), (20, 200, 20)).save(images / "scene2.png")
    return tmp_path


def verify(tmp, spec, cache, name="verified"):
    out = {"verified": str(tmp / f"{name}.parquet"), "rejects": str(tmp / f"{name}.rejects.parquet"),
           "counts": str(tmp / f"{name}.counts.json")}
    run_script("tsst_verify.py", FakeSnakemake(
        input={"search": str(tmp / "search.parquet"), "questions": str(tmp / "questions.parquet")}, output=out,
        params={"judge": spec, "judge_opts": {"max_new_tokens": 8, "chunk_size": 2, "prompt": None, "system_prompt": None},
                "cache": str(cache)},
        log=[str(tmp / "logs" / f"{name}.log")]))
    return out


def test_verify_judges_every_chain_caches_llm_verdicts_and_accounts_for_every_question(tables, key_env):
    cache = tables / "judge_cache.jsonl"
    with judge_server() as server:
        out = verify(tables, judge_spec(server), cache)
        first_requests = server.state.requests
    assert pq.read_table(out["verified"]).schema.equals(table_schema("tsst_verified"), check_metadata=False)
    verified = read_table(out["verified"])
    assert list(zip(verified["id"], verified["rank"], verified["judged_by"], verified["verdict"])) == [
        ("q1", 0, "regex", "true"), ("q1", 1, "judge", "false"), ("q1", 2, "judge", "true"),
        ("q2", 0, "match", "true"), ("q2", 1, "judge", "false"),
    ]
    assert verified["correct"].tolist() == [True, False, True, True, False]
    assert verified["answer"].tolist() == ["A.", "the square shape", "a red circle", "four", "C"]
    assert first_requests == 3  # only the three answers no regex or match settles
    rejects = read_table(out["rejects"]).set_index("id")["reason"]
    assert "no chain" in rejects["q3"] and "not in the question table" in rejects["q9"]
    counts = json.loads(Path(out["counts"]).read_text())
    assert (counts["in"], counts["out"], counts["rejected"], counts["chains"]) == (4, 2, 2, 5)
    assert "sk-judge-test" not in Path(out["counts"]).read_text() + (tables / "logs" / "verified.log").read_text()

    with judge_server() as server:  # a re-run: every LLM verdict from the cache
        again = verify(tables, judge_spec(server), cache, name="again")
        assert server.state.requests == 0
    assert read_table(again["verified"])["judged_by"].tolist() == ["regex", "cache", "cache", "match", "cache"]
    assert read_table(again["verified"])["verdict"].tolist() == verified["verdict"].tolist()


def test_unreachable_judge_is_recorded_unknown_and_asked_again_later(tables, key_env):
    cache = tables / "down_cache.jsonl"
    with judge_server(fail_first=1000, fail_status=503) as server:
        out = verify(tables, judge_spec(server), cache)
    verified = read_table(out["verified"])
    by_judge = verified[verified["judged_by"] != "regex"]
    by_judge = by_judge[by_judge["judged_by"] != "match"]
    assert set(by_judge["judged_by"]) == {"error"} and set(by_judge["verdict"]) == {"unknown"}
    assert not by_judge["correct"].any()
    assert not cache.exists() or cache.read_text() == ""
    with judge_server() as server:
        later = verify(tables, judge_spec(server), cache, name="later")
        assert server.state.requests == 3
    assert "error" not in set(read_table(later["verified"])["judged_by"])


def _verified_table(tmp):
    rows = [
        {"id": "q1", "rank": 0, "text": "Red and round. Final Answer: A.", "score": 0.9, "answer": "A.", "verdict": "true", "correct": True, "judged_by": "regex"},
        {"id": "q1", "rank": 1, "text": "Red and square. Final Answer: B.", "score": 0.5, "answer": "B.", "verdict": "false", "correct": False, "judged_by": "regex"},
        {"id": "q2", "rank": 0, "text": "Three sides. Final Answer: A.", "score": 0.7, "answer": "A.", "verdict": "false", "correct": False, "judged_by": "regex"},
        {"id": "q3", "rank": 0, "text": "It is green. Final Answer: B.", "score": 0.4, "answer": "B.", "verdict": "true", "correct": True, "judged_by": "regex"},
    ]
    write_table(pd.DataFrame(rows), tmp / "verified.parquet", schema=table_schema("tsst_verified"))
    return tmp / "verified.parquet"


def round_data(tmp, name, opts, previous=None, questions=None, image_roots=("sets/demo",)):
    out = {k: str(tmp / name / f"{k}.json") for k in ("policy", "value", "counts")}
    inputs = {"verified": str(_verified_table(tmp)), "questions": questions or str(tmp / "questions.parquet"), **(previous or {})}
    run_script("tsst_round_data.py", FakeSnakemake(input=inputs, output=out,
                                                   params={"round": 1, "opts": opts, "prompts": None,
                                                           "image_roots": list(image_roots)},
                                                   log=[str(tmp / "logs" / f"{name}.log")]))
    return {k: json.loads(Path(v).read_text()) for k, v in out.items()}


def test_round_data_writes_llava_json_with_counts_and_accumulates(tables):
    previous = tables / "warmup"
    previous.mkdir()
    (previous / "policy.json").write_text(json.dumps([{"id": "warm-1", "conversations": []}]))
    (previous / "value.json").write_text(json.dumps([{"id": "warm-v", "conversations": [], "value": 0.5}]))
    opts = {"value_labels": "tree", "leaf_rule": "any", "sentence_cut": "sentence", "accumulate": True}
    data = round_data(tables, "r1", opts, {"previous_policy": str(previous / "policy.json"),
                                           "previous_value": str(previous / "value.json")})
    policy, value, counts = data["policy"], data["value"], data["counts"]
    assert [r["id"] for r in policy] == ["warm-1", "tsst-r1-q1", "tsst-r1-q3"]
    q1 = policy[1]
    prompts = load_question_prompts()
    assert q1["image"] == "sets/demo/scene1.png"  # named from the run folder, under its set's images
    assert q1["conversations"] == [
        {"from": "human", "value": prompts.human_turn("What shape is red?", ["circle", "square", "star"], has_image=True)},
        {"from": "gpt", "value": "Red and round. Final Answer: A."}]
    assert value[0]["id"] == "warm-v"
    q1_values = {r["conversations"][1]["value"]: r["value"] for r in value if r["id"].startswith("tsst-r1-q1-")}
    assert q1_values == {"Red and round.": 0.5, "Red and round. Final Answer: A.": 1.0, "Red and square.": 0.0,
                         "Red and square. Final Answer: B.": 0.0}
    assert counts["questions"] == 4 and counts["with_correct_chain"] == 2 and counts["new_dplus_records"] == 2
    assert counts["dplus_records"] == 3 and counts["dropped_questions"] == 2  # q2 no correct chain, q4 no chain
    assert counts["value_records"] == 1 + counts["new_value_records"]

    alone = round_data(tables, "r1-alone", {**opts, "accumulate": False, "value_labels": "per_chain"},
                       {"previous_policy": str(previous / "policy.json")})
    assert [r["id"] for r in alone["policy"]] == ["tsst-r1-q1", "tsst-r1-q3"]
    assert any(r["id"].startswith("tsst-r1-q2-") for r in alone["value"])  # per-chain keeps negatives


def test_round_data_refuses_a_question_id_in_two_train_sets(tables):
    both = [str(tables / "questions.parquet")] * 2
    with pytest.raises(ValueError, match="appear in more than one train set"):
        round_data(tables, "clash", {"accumulate": False}, questions=both, image_roots=("a", "b"))


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    texts = [" ".join(QUESTIONS["question"]), "Final Answer: circle square star four three green blue"]
    return build_tiny_llava(tmp_path_factory.mktemp("tsst-direct") / "tiny-llava", seed=0, texts=texts)


def test_direct_eval_answers_every_readable_question_and_judges_it(tables, llava, key_env):
    out = {"kept": str(tables / "direct" / "answers.parquet"), "rejects": str(tables / "direct" / "answers.rejects.parquet"),
           "counts": str(tables / "direct" / "answers.counts.json")}
    generation = {"backend": "hf", "batch_size": 4, "model": {"path": str(llava), "device": "cpu"}}
    with judge_server() as server:
        run_script("tsst_eval_direct.py", FakeSnakemake(
            input={"records": str(tables / "questions.parquet"), "policy": str(llava)}, output=out,
            params={"generation": generation, "judge": judge_spec(server), "judge_opts": {"max_new_tokens": 8},
                    "judge_cache": str(tables / "cache.jsonl"), "image_folder": str(tables / "images"),
                    "opts": {"max_new_tokens": 12, "chunk_size": 2}, "prompts": None,
                    "progress_dir": str(tables / ".progress" / "direct")},
            log=[str(tables / "logs" / "direct.log")]))
    answers = read_table(out["kept"])
    # StageJob writes pandas' own string type; the table casts to its schema losslessly
    written = pq.read_table(out["kept"])
    assert written.schema.names == table_schema("tsst_direct_answers").names
    assert written.cast(table_schema("tsst_direct_answers")).to_pylist() == written.to_pylist()
    assert answers["id"].tolist() == ["q1", "q2", "q3"]
    assert set(answers["judged_by"]) <= {"regex", "match", "judge", "cache"}
    assert read_table(out["rejects"])["id"].tolist() == ["q4"]  # missing image
    assert "missing.png" in read_table(out["rejects"])["reason"][0]
    counts = json.loads(Path(out["counts"]).read_text())
    assert (counts["in"], counts["out"], counts["rejected"]) == (4, 3, 1)

    # batched with left padding and a mask: each answer is what the question gets alone
    generator = make_generator({**generation, "conversation_format": CONVERSATION_FORMAT}, kind="vision")
    prompts = load_question_prompts()
    image = Image.open(tables / "images" / "scene1.png").convert("RGB")
    alone = generator.generate([direct_prompt(QUESTIONS.iloc[0], prompts, image)], SamplingParams(max_new_tokens=12))
    assert alone[0][0] == answers["response"][0]


def test_eval_table_over_rounds(tables):
    verified = _verified_table(tables)
    direct = tables / "answers.parquet"
    write_table(pd.DataFrame([{"id": "q1", "response": "Final Answer: A", "answer": "A", "verdict": "true", "correct": True, "judged_by": "regex"},
                              {"id": "q2", "response": "", "answer": None, "verdict": "false", "correct": False, "judged_by": "regex"}]),
                direct, schema=table_schema("tsst_direct_answers"))
    out = {"table": str(tables / "eval" / "table.parquet"), "tsv": str(tables / "eval" / "table.tsv")}
    run_script("tsst_eval_table.py", FakeSnakemake(
        input={"questions": str(tables / "questions.parquet"), "direct": [str(direct), str(direct)], "search": str(verified)},
        output=out, params={"direct_rounds": [0, 1], "search_rounds": [1]}, log=[str(tables / "logs" / "table.log")]))
    assert pq.read_table(out["table"]).schema.equals(table_schema("tsst_eval_table"), check_metadata=False)
    table = read_table(out["table"]).set_index(["round", "mode", "metric"])
    assert table.loc[(0, "direct", "accuracy"), "value"] == 0.25  # 1 of 4 questions; q3, q4 unanswered count wrong
    assert table.loc[(1, "search", "greedy_acc"), "value"] == 0.5 and table.loc[(1, "search", "greedy_acc"), "n"] == 4
    assert table.loc[(1, "search", "absolute_acc"), "value"] == 0.5 and table.loc[(1, "search", "absolute_acc"), "n"] == 4
    assert table.loc[(1, "search", "voting_acc_original"), "value"] == 0.75  # q4 without chains counted right
    assert table.loc[(1, "search", "voting_acc"), "value"] == 0.5
    tsv = Path(out["tsv"]).read_text().splitlines()
    assert tsv[0].split("\t") == ["mode", "metric", "round_0", "round_1"]

    plot = tables / "eval" / "accuracy.png"
    run_script("plot_tsst_eval.py", FakeSnakemake(input={"table": out["table"]}, output={"plot": str(plot)},
                                                  params={"title": "TSST"}, log=[str(tables / "logs" / "plot.log")]))
    assert Image.open(plot).size[0] > 100


def test_verify_with_a_local_hf_judge(tables, tmp_path_factory):
    from groundflow.models.causal_lm import build_tiny_causal_lm

    judge_model = build_tiny_causal_lm(tmp_path_factory.mktemp("judge") / "tiny-judge", seed=0,
                                       texts=["True False Unknown Question Options Correct Answer Provided Response"])
    spec = {"backend": "hf", "batch_size": 4, "model": {"path": str(judge_model), "device": "cpu"}}
    cache = tables / "hf_cache.jsonl"
    out = verify(tables, spec, cache)
    verified = read_table(out["verified"])
    llm = verified[verified["judged_by"] == "judge"]
    assert len(llm) == 3 and set(llm["verdict"]) <= {"true", "false", "unknown"}
    assert len(cache.read_text().splitlines()) == 3  # a random model's verdicts are still verdicts
    counts = json.loads(Path(out["counts"]).read_text())
    assert counts["produced_by"]["generator"]["backend"] == "hf" and counts["judge_prompts_sent"] == 3
