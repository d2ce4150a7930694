"""Signal, not only plumbing: the tiny Llama-3-style LM, trained by the CINGS scripts on a handful of
short-answer questions, answers them in the pre-filled setting, and the untrained one does not.

Every score of the demo's table is 0.0, which a broken mask, a wrong prompt layout or a scorer bug
would give too. Here the whole chain runs as the workflow runs it: Self-RAG records with each
question's gold passage -> `cings_convert` -> `cings_tokenize` (the `context` mode: passage
masked) -> `cings_train` (the shared SFT trainer) -> `infer_setting` (`prefilled_1doc`, the HF text
generator) -> `exact_match`. Training teaches the model to write the answer after `## Answer`;
should the labels mask the answer, the pre-fill differ from training's text, or the scorer not
match, the trained model's exact match falls to the untrained model's.

The evaluation records are the demo's own file (`eval_records`), so two prompts differ from their
training text: nq-1 has no gold passage (a retrieved distractor is shown) and nq-2 shows a longer
gold passage. A memorised answer can still come out there; the threshold does not need it.
"""
import json
import time

import pandas as pd
import pytest

from groundflow.cings.eval_fixture import FACTS, eval_records
from groundflow.cings.inference import RawEntry, infer_setting, validate_records
from groundflow.cings.scoring import exact_match
from groundflow.config import load_schema
from groundflow.demo import build_demo_model
from groundflow.generate.backends import SamplingParams, make_generator
from script_harness import SCRIPTS, FakeSnakemake, run_script

CINGS_SCHEMA = load_schema()["properties"]["cings"]["properties"]
DATA = {key: spec["default"] for key, spec in CINGS_SCHEMA["data"]["properties"].items()}
LABELS = {key: spec["default"] for key, spec in CINGS_SCHEMA["labels"]["properties"].items()}
SHORT_ANSWER = [fact for fact in FACTS if not fact[0].startswith("eli5")]
# Full fine-tuning at a constant rate: on ten examples the tiny model reaches a loss near 0 in
# about 100 steps (~20 s on two CPU cores); the paper's LoRA + per-epoch decay needs far more.
TRAIN = {"learning_rate": 3e-3, "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "max_steps": 100,
         "per_device_batch_size": len(SHORT_ANSWER), "max_length": 512, "save_steps": 1000, "report_to": "none",
         "lora": None, "seed": 0}
MIN_TRAINED_EM = 0.6
MAX_UNTRAINED_EM = 0.1


def selfrag_line(qid: str, question: str, answer: str, title: str, text: str) -> str:
    """A Self-RAG training record whose one relevant passage is the question's gold passage."""
    output = f"[Retrieval]<paragraph>{title} {text}</paragraph>[Relevant]{answer}[Fully supported][Utility:5]"
    return json.dumps({"id": f"train-{qid}", "instruction": question, "input": "", "output": output,
                       "dataset_name": "eval_fixture"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(base model, trained model, seconds the three scripts took)."""
    work = tmp_path_factory.mktemp("cings-learns")
    base = build_demo_model("llama3", work / "tiny-llama3", seed=0)
    records = work / "selfrag.jsonl"
    records.write_text("".join(selfrag_line(qid, q, answers[0], title, text) + "\n"
                               for qid, q, answers, title, text in SHORT_ANSWER))
    data, tokenized, train_dir = work / "data", work / "tokenized", work / "train" / "context"
    start = time.perf_counter()
    run_script("cings_convert.py", FakeSnakemake(
        input={"records": str(records)},
        output={"table": str(data / "records.parquet"), "filtered": str(data / "filtered.jsonl"),
                "rejects": str(data / "rejects.parquet"), "counts": str(data / "counts.json")},
        params={"records": str(records), "opts": DATA}, log=[str(work / "logs/convert.log")]))
    run_script("cings_tokenize.py", FakeSnakemake(
        input={"table": str(data / "records.parquet"), "model": str(base), "tokenizer": []},
        output={"tables": [str(tokenized / "context.parquet")], "rejects": [str(tokenized / "context.rejects.parquet")],
                "counts": [str(tokenized / "context.counts.json")]},
        params={"modes": ["context"], "model": {"path": str(base)}, "labels": LABELS,
                "system_prompt": DATA["system_prompt"], "tokenize": {"batch_size": 4}, "train": TRAIN},
        log=[str(work / "logs/tokenize/context.log")]))
    smk = FakeSnakemake(
        input={"table": str(tokenized / "context.parquet"), "counts": str(tokenized / "context.counts.json"),
               "model": str(base), "tokenizer": []},
        output={"model": str(train_dir / "model"), "summary": str(train_dir / "train_summary.json")},
        params={"model": {"path": str(base)}, "train": TRAIN, "out_dir": str(train_dir)},
        log=[str(work / "logs/train/context.log")])
    smk.scriptdir = str(SCRIPTS)  # Snakemake's own attribute; training scripts find the checkout by it
    run_script("cings_train.py", smk)
    seconds = time.perf_counter() - start

    tokenize_counts = json.loads((tokenized / "context.counts.json").read_text())
    assert tokenize_counts["in"] == tokenize_counts["out"] == len(SHORT_ANSWER)
    cache = pd.read_parquet(tokenized / "context.parquet")
    assert (cache["n_masked_in_assistant"] > 0).all()  # the passage carried no loss
    return base, train_dir / "model", seconds


@pytest.fixture(scope="module")
def questions():
    result = validate_records(RawEntry(i + 1, r) for i, r in enumerate(eval_records(len(SHORT_ANSWER))))
    assert result.counts["rejected"] == 0 and list(result.kept["id"]) == [fact[0] for fact in SHORT_ANSWER]
    return result.kept


def prefilled_exact_match(model_dir, questions) -> tuple[float, pd.DataFrame]:
    generator = make_generator({"backend": "hf", "batch_size": len(questions),
                                "model": {"path": str(model_dir), "device": "cpu"}}, kind="text")
    result = infer_setting(questions, generator, SamplingParams(max_new_tokens=16), "prefilled_1doc", ndocs=3,
                           system_prompt=DATA["system_prompt"])
    assert result.rejects.empty and len(result.kept) == len(questions)
    kept = result.kept.assign(em=[exact_match(p, list(a)) for p, a in zip(result.kept["prediction"], result.kept["answers"])])
    return float(kept["em"].mean()), kept


def test_the_trained_model_answers_its_questions_and_the_untrained_one_does_not(trained, questions):
    base, model_dir, seconds = trained
    trained_em, answers = prefilled_exact_match(model_dir, questions)
    untrained_em, untrained = prefilled_exact_match(base, questions)
    report = "\n".join(f"{r.id}: {r.generation!r} (gold {list(r.answers)}) em={r.em}" for r in answers.itertuples())
    print(f"convert + tokenize + train: {seconds:.1f} s; exact match trained {trained_em:.2f}, untrained {untrained_em:.2f}\n"
          + report)
    assert trained_em >= MIN_TRAINED_EM, report
    assert untrained_em <= MAX_UNTRAINED_EM, untrained[["id", "generation"]].to_string()
    # the model answers in the trained layout: after the pre-filled `## Answer` comes the answer,
    # not another passage block (which `answer_text` would have to strip)
    assert not answers["generation"].str.contains("## Context").any(), report
