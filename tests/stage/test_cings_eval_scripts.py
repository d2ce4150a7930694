"""The CINGS evaluation scripts as Snakemake runs them (tests/stage/script_harness.py), on the demo's
files of every kind and a tiny random Llama-3-style checkpoint: fixture -> records -> one inference job
per dataset x mode (every setting of the dataset, one predictions table) -> the long table and its pivot.
"""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from groundflow.cings.eval_fixture import BAD_BY_KIND, EVAL_KINDS, eval_fixture_texts, fixture_datasets, kind_records
from groundflow.cings.inference import SETTINGS, build_prompt, load_instruction, resolve_dataset, resolved_entry
from groundflow.generate.backends import ChatPrompt, make_generator
from groundflow.io import read_table
from groundflow.io.schemas import table_schema
from groundflow.cings.inference import prompt_token_counts
from groundflow.models.causal_lm import build_tiny_causal_lm
from script_harness import FakeSnakemake, run_script

SYSTEM = "Answer with the context."
INFERENCE = {"settings": list(SETTINGS), "ndocs": 2, "use_gold_docs": True, "max_new_tokens": 4,
             "max_prompt_tokens": None, "chunk_size": 3, "sentence_completion_prompt": None}
MODES = ["context", "no_mask"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("cings-eval") / "tiny-llama3", seed=0,
                                texts=eval_fixture_texts(), flavor="llama3")


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixture") / "eval"
    smk = FakeSnakemake(input={}, output={kind: str(folder / f"{kind}.jsonl") for kind in EVAL_KINDS},
                        params={"n_retrieved": 3, "include_bad": True}, log=[str(folder.parent / "fixture.log")])
    run_script("cings_eval_fixture.py", smk)
    return folder


def _records(tmp: Path, entry: dict) -> dict:
    out = {"kept": str(tmp / entry["name"] / "records.parquet"), "rejects": str(tmp / entry["name"] / "records.rejects.parquet"),
           "counts": str(tmp / entry["name"] / "records.counts.json")}
    run_script("cings_eval_records.py", FakeSnakemake(
        input={"eval_file": entry["path"]}, output=out, params={"dataset": {k: entry.get(k) for k in ("name", "metrics", "labels")}, "path": entry["path"]},
        log=[str(tmp / "logs" / entry["name"] / "records.log")]))
    return out


def _infer(tmp: Path, entry: dict, records: str, model_dir: Path, mode: str, inference: dict = INFERENCE) -> dict:
    base = tmp / entry["name"] / mode
    out = {"kept": str(base / "predictions.parquet"), "rejects": str(base / "predictions.rejects.parquet"),
           "counts": str(base / "predictions.counts.json")}
    run_script("cings_infer.py", FakeSnakemake(
        input={"records": records, "model": str(model_dir)}, output=out,
        params={"generation": {"backend": "hf", "batch_size": 4, "model": {"path": str(model_dir), "device": "cpu"}},
                "opts": inference, "dataset": resolved_entry(entry, inference), "system_prompt": SYSTEM,
                "progress_dir": str(tmp / ".progress" / entry["name"] / mode),
                "server_log": str(tmp / "logs" / entry["name"] / f"{mode}.server.log")},
        log=[str(tmp / "logs" / entry["name"] / f"{mode}.log")]))
    return out


def test_fixture_script_writes_every_kind(fixture_dir):
    assert sorted(p.name for p in fixture_dir.iterdir()) == sorted(f"{k}.jsonl" for k in EVAL_KINDS)
    lines = (fixture_dir / "based_swde.jsonl").read_text().splitlines()
    assert len(lines) == len(kind_records("based_swde")) + len(BAD_BY_KIND["based_swde"])


def test_records_script_writes_its_schema_and_rejects_labels_it_cannot_score(tmp_path, fixture_dir):
    fever = next(e for e in fixture_datasets(fixture_dir) if e["name"] == "kilt_fever")
    out = _records(tmp_path, fever)
    table = pq.read_table(out["kept"])
    assert table.schema.equals(table_schema("cings_eval_records"), check_metadata=False)
    kept = read_table(out["kept"])
    assert len(kept) == len(kind_records("kilt_fever"))
    first = list(kept.iloc[0]["docs"])
    assert first[0]["gold"] and first[0]["score"] is None and not first[1]["gold"] and first[1]["score"] > 0
    rejects = read_table(out["rejects"])
    assert set(rejects["id"]) == {"fever-bad-label", "line:4"}
    counts = json.loads(Path(out["counts"]).read_text())
    assert (counts["in"], counts["out"], counts["rejected"], counts["dataset"]) == (8, 6, 2, "kilt_fever")
    # the same file read as a short-answer set keeps the record whose answer is no label
    out = _records(tmp_path / "plain", {**fever, "metrics": ["exact_match"]})
    assert json.loads(Path(out["counts"]).read_text())["out"] == 7


def test_one_job_answers_every_setting_and_a_request_rejected_in_one_setting_still_adds_up(tmp_path, fixture_dir,
                                                                                            model_dir):
    entry = next(e for e in fixture_datasets(fixture_dir) if e["name"] == "kilt_fever")
    records = _records(tmp_path, entry)["kept"]
    # a token limit between the closed-book and the k-passage prompts: some requests are rejected
    # in the passage settings and the same records are answered closed-book
    generator = make_generator({"backend": "hf", "model": {"path": str(model_dir), "device": "cpu"}}, kind="text")
    kept = read_table(records).to_dict("records")
    lengths = {s: prompt_token_counts(generator, [ChatPrompt(list(p.messages), assistant_prefix=p.assistant_prefix)
                                                  for p in (build_prompt(r, s, ndocs=2, system_prompt=SYSTEM)
                                                            for r in kept)])
               for s in SETTINGS}
    limit = sorted(lengths["prefilled_kdocs"])[len(kept) // 2]
    assert max(lengths["closed_book"]) <= limit < max(lengths["prefilled_kdocs"])
    out = _infer(tmp_path, entry, records, model_dir, "context", {**INFERENCE, "max_prompt_tokens": limit})
    predictions = pq.read_table(out["kept"])
    assert predictions.schema.equals(table_schema("cings_eval_predictions"), check_metadata=False)
    predictions, rejects = predictions.to_pandas(), read_table(out["rejects"])
    counts = json.loads(Path(out["counts"]).read_text())
    n = len(kept)
    assert (counts["in"], counts["out"] + counts["rejected"]) == (n * len(SETTINGS), n * len(SETTINGS))
    assert counts["chunks"] == -(-n * len(SETTINGS) // INFERENCE["chunk_size"])
    too_long = {f"{r['id']}|{s}" for s in SETTINGS for r, length in zip(kept, lengths[s]) if length > limit}
    assert too_long and set(rejects["id"]) == too_long
    assert set(predictions["id"]) | set(rejects["id"]) == {f"{r['id']}|{s}" for r in kept for s in SETTINGS}
    answered_closed_book = set(predictions.loc[predictions["setting"] == "closed_book", "record_id"])
    assert answered_closed_book == {r["id"] for r in kept}
    assert {i.rsplit("|", 1)[0] for i in rejects["id"]} & answered_closed_book  # rejected there, kept here
    assert (predictions["id"] == predictions["record_id"] + "|" + predictions["setting"]).all()


def test_sentence_completion_job_asks_prefilled_1doc_with_our_instruction(tmp_path, fixture_dir, model_dir):
    entry = next(e for e in fixture_datasets(fixture_dir) if e["name"] == "based_swde")
    records = _records(tmp_path, entry)["kept"]
    out = _infer(tmp_path, entry, records, model_dir, "context")
    predictions = read_table(out["kept"])
    assert set(predictions["setting"]) == {"prefilled_1doc"} and (predictions["n_docs"] == 1).all()
    assert len(predictions) == len(kind_records("based_swde"))
    produced_by = json.loads(Path(out["counts"]).read_text())["produced_by"]
    assert produced_by["instruction"] == load_instruction("sentence_completion_newline").version
    assert produced_by["prompt_kind"] == "sentence_completion_newline" and produced_by["settings"] == ["prefilled_1doc"]
    # a global setting list that the dataset does not narrow is refused before any model loads
    with pytest.raises(ValueError, match="dataset 'based_swde'.*prefilled_1doc only"):
        _infer(tmp_path / "bad", {**entry, "settings": None}, records, model_dir, "context")


def test_table_script_scores_each_dataset_with_its_metrics(tmp_path, fixture_dir, model_dir):
    entries = fixture_datasets(fixture_dir)
    inputs = {"predictions": [], "rejects": [], "counts": [], "record_counts": []}
    runs = []
    for entry in entries:
        records = _records(tmp_path, entry)
        inputs["record_counts"].append(records["counts"])
        for mode in MODES:
            out = _infer(tmp_path, entry, records["kept"], model_dir, mode)
            inputs["predictions"].append(out["kept"])
            inputs["rejects"].append(out["rejects"])
            inputs["counts"].append(out["counts"])
            runs.append([entry["name"], mode])
    output = {"tsv": str(tmp_path / "table.tsv"), "table": str(tmp_path / "table.parquet"),
              "scores": str(tmp_path / "scores.parquet")}
    run_script("cings_eval_table.py", FakeSnakemake(
        input=inputs, output=output,
        params={"runs": runs, "datasets": [resolved_entry(e, INFERENCE) for e in entries], "scoring": {"rouge_stemmer": False}},
        log=[str(tmp_path / "logs" / "table.log")]))
    table = pq.read_table(output["table"])
    assert table.schema.equals(table_schema("cings_eval_table"), check_metadata=False)
    table = table.to_pandas()
    expected = [(e["name"], mode, setting, metric)
                for e in entries for mode in MODES
                for setting in resolve_dataset(e, INFERENCE).settings for metric in resolve_dataset(e, INFERENCE).metrics]
    assert list(table[["dataset", "mode", "setting", "metric"]].itertuples(index=False, name=None)) == expected
    valid = {e["name"]: len(kind_records(e["name"])) for e in entries}
    assert ((table["n"] + table["rejected"]) == table["dataset"].map(valid)).all()
    assert table["score"].between(0, 1).all()
    assert set(table.loc[table["dataset"] == "kilt_fever", "metric"]) == {"label_accuracy"}
    assert set(table.loc[table["dataset"] == "kilt_eli5", "metric"]) == {"rouge_l"}
    scores = pq.read_table(output["scores"])
    assert scores.schema.equals(table_schema("cings_eval_scores"), check_metadata=False)
    scores = scores.to_pandas()
    assert len(scores) == table.drop_duplicates(["dataset", "mode", "setting"])["n"].sum()
    fever = scores[scores["dataset"] == "kilt_fever"]
    assert fever["label_accuracy"].notna().all() and fever["exact_match"].isna().all()
    # each table score is the mean of its predictions' scores
    for row in table.itertuples():
        mine = scores[(scores["dataset"] == row.dataset) & (scores["mode"] == row.mode) & (scores["setting"] == row.setting)]
        assert mine[row.metric].mean() == pytest.approx(row.score)
    pivot = pd.read_csv(output["tsv"], sep="\t")
    assert list(pivot.columns) == ["dataset", "setting", "metric", *MODES, *(f"n_{m}" for m in MODES)]
    assert len(pivot) == len(table) // len(MODES)


class FailingOnce:
    """Answers with a fixed word; raises on its `fail_at`-th call (a job killed mid-way)."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at

    def generate(self, prompts, params):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        return [[" Paris"] for _ in prompts]


def test_a_killed_job_resumes_its_finished_requests(tmp_path, fixture_dir):
    from groundflow.cings.inference import infer_requests, setting_requests
    from groundflow.generate.backends import SamplingParams
    from groundflow.pipeline import StageJob

    entry = next(e for e in fixture_datasets(fixture_dir) if e["name"] == "nq_conflict")
    records = _records(tmp_path, entry)["kept"]
    dataset = resolve_dataset(entry, INFERENCE)

    def run(generator):
        job = StageJob("infer", records=records, kept=str(tmp_path / "p.parquet"), rejects=str(tmp_path / "r.parquet"),
                       counts=str(tmp_path / "c.json"), progress_dir=str(tmp_path / ".progress"))
        return job.run(lambda requests: infer_requests(requests, generator, SamplingParams(max_new_tokens=2),
                                                       ndocs=1, system_prompt=""),
                       units=lambda frame: setting_requests(frame, dataset.settings),
                       produced_by={"test": 1}, chunk_size=4)

    with pytest.raises(RuntimeError, match="killed"):
        run(FailingOnce(fail_at=2))
    generator = FailingOnce()
    summary = run(generator)
    n = len(kind_records("nq_conflict")) * len(dataset.settings)  # 6 records x 2 settings, chunks of 4
    assert (summary["in"], summary["out"], summary["chunks"], summary["chunks_reused"]) == (n, n, 3, 1)
    assert generator.calls == 2
    assert set(read_table(tmp_path / "p.parquet")["setting"]) == {"prefilled_1doc", "closed_book"}


def test_a_job_that_rejects_every_request_writes_an_empty_predictions_table(tmp_path, fixture_dir, model_dir):
    entry = next(e for e in fixture_datasets(fixture_dir) if e["name"] == "nq_conflict")
    records = _records(tmp_path, entry)["kept"]
    out = _infer(tmp_path, entry, records, model_dir, "context", {**INFERENCE, "max_prompt_tokens": 1})
    predictions = pq.read_table(out["kept"])
    assert predictions.num_rows == 0
    assert predictions.schema.equals(table_schema("cings_eval_predictions"), check_metadata=False)
    counts = json.loads(Path(out["counts"]).read_text())
    assert (counts["out"], counts["rejected"]) == (0, 2 * len(kind_records("nq_conflict")))
