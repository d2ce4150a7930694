"""`groundflow trace` over the demo run's real results: what it says must be what the tables say."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from groundflow.cli import main
from groundflow.trace import KEPT, REJECTED, ParquetTables, trace

pytestmark = pytest.mark.workflow

CVC_ENTITY_STAGES = ["entities", "causality", "grounding", "segmentation", "occlusion", "instructions",
                     "trials", "extraction", "checking", "selection"]


def shards(results: Path, stage: str) -> pd.DataFrame:
    paths = sorted(p for p in (results / "cvc" / stage).glob("*.parquet") if not p.name.endswith("rejects.parquet"))
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def a_caption_into_the_hybrid_mix(results: Path) -> tuple[str, str, list[str]]:
    """(caption id, instance id, its sample ids): the first instance with hybrid samples."""
    hybrid = pd.read_parquet(results / "cvc/hybrid/train.parquet")
    samples = hybrid[hybrid["source"].isin(["cot", "answer"])]
    checking = shards(results, "checking").set_index("id")
    for entity_id, row in checking.iterrows():
        stem = Path(row["occluded_image"]).stem
        mine = samples[samples["id"].str.fullmatch(rf"{stem}-(?:cot|answer)-\d+")]
        if len(mine):
            return str(row["caption_ids"][0]), str(entity_id), sorted(mine["id"])
    raise AssertionError("the demo put no instance into the hybrid mix")


def test_a_caption_traced_to_its_hybrid_records(demo):
    results = demo / "results"
    caption_id, entity_id, sample_ids = a_caption_into_the_hybrid_mix(results)
    [caption] = trace(caption_id, ParquetTables(results)).matches
    ingest = shards(results, "ingest").set_index("id").loc[caption_id]
    steps = {s.stage: s for s in caption.steps}
    assert [s.status for s in caption.steps] == [KEPT, KEPT, KEPT]
    assert steps["ingest"].fields == {"image_id": ingest["image_id"], "image": ingest["image"], "caption": ingest["caption"]}
    entities = shards(results, "entities")
    named = entities[entities["caption_ids"].apply(lambda ids: caption_id in list(ids))]
    assert [e.id for e in steps["entities"].children] == list(named["id"])

    entity = next(e for e in steps["entities"].children if e.id == entity_id)
    assert [s.stage for s in entity.steps] == CVC_ENTITY_STAGES
    assert all(s.status == KEPT for s in entity.steps)
    entity_steps = {s.stage: s for s in entity.steps}
    checked = shards(results, "checking").set_index("id").loc[entity_id]
    assert entity_steps["occlusion"].fields["occluded_image"] == checked["occluded_image"]
    assert entity_steps["checking"].fields == {"n_correct": int(checked["n_correct"])}
    trials = entity_steps["checking"].children
    assert [t.fields["rationale"] for t in trials] == list(checked["trials"])
    assert [t.fields["answer"] for t in trials] == list(checked["predictions"])
    assert [t.fields["correct"] for t in trials] == [bool(c) for c in checked["correct"]]
    assert sorted(r.id for r in entity_steps["selection"].children) == sample_ids


def every_reject(results: Path) -> pd.DataFrame:
    """CVC's and CINGS's gathered rejects, and every evaluation table's: each set's build and
    records, each inference job's requests, POPE's scenes and answers."""
    evaluation = sorted((results / "cings/eval").glob("[!.]*/*rejects.parquet"))
    evaluation += sorted((results / "cings/eval").glob("[!.]*/[!.]*/*rejects.parquet"))
    return pd.concat([pd.read_parquet(results / "cvc/rejects.parquet"),
                      pd.read_parquet(results / "cvc/trial_rejects.parquet"),
                      pd.read_parquet(results / "cings/rejects.parquet"),
                      *(pd.read_parquet(p) for p in evaluation)], ignore_index=True)


def every_step(node):
    for step in node.steps:
        yield step
        for child in step.children:
            yield from every_step(child)
    for child in node.children:
        yield from every_step(child)


def test_every_rejected_record_ends_at_its_stage_with_its_reason(demo):
    results = demo / "results"
    tables = ParquetTables(results)
    rejects = every_reject(results)
    assert {"ingest", "images", "grounding", "segmentation", "selection", "convert", "eval_records",
            "kilt_questions", "kilt_corpus"} <= set(rejects["stage"])
    for reject in rejects.itertuples(index=False):
        # a line:N id can be rejected by several sets (or by a set's questions and its corpus), and
        # a request id by several modes: the trace shows each, one of them this reject
        steps = [step for node in trace(reject.id, tables).matches for step in every_step(node)
                 if step.stage == reject.stage]
        assert steps, f"{reject.id}: the trace has no {reject.stage} step"
        # no id is both kept and rejected (a repeated eval question id is rejected as its line:N)
        assert (REJECTED, reject.reason) in {(step.status, step.reason) for step in steps}, reject.id
        assert KEPT not in {step.status for step in steps if step.stage != "infer"}, reject.id


def test_an_eval_question_shows_each_jobs_prediction_and_score(demo):
    results = demo / "results"
    scores = pd.read_parquet(results / "cings/eval/scores.parquet")
    scored = scores.iloc[0]
    [question] = [m for m in trace(scored["record_id"], ParquetTables(results)).matches
                  if m.notes[0] == f"dataset {scored['dataset']}"]
    runs = {run.id: run for run in question.steps[-1].children}
    # every job of the set answered or rejected the question in every setting it asked
    jobs = sorted((results / "cings/eval" / scored["dataset"]).glob("*/predictions.counts.json"))
    assert set(runs) == {f"{job.parent.name}/{setting}" for job in jobs
                         for setting in json.loads(job.read_text())["produced_by"]["settings"]}
    infer, score = runs[f"{scored['mode']}/{scored['setting']}"].steps
    assert (infer.status, infer.fields["prediction"]) == (KEPT, scored["prediction"])
    assert score.fields == {m: float(scored[m]) for m in ["exact_match", "accuracy", "rouge_l", "label_accuracy"]
                            if not pd.isna(scored[m])}


def test_cli_trace_of_a_grounding_reject_in_text_and_json(demo, capsys):
    results = demo / "results"
    rejects = pd.read_parquet(results / "cvc/rejects.parquet")
    reject = rejects[rejects["stage"] == "grounding"].iloc[0]
    assert main(["trace", reject["id"], str(results)]) == 0
    text = capsys.readouterr().out
    assert f"entity {reject['id']}" in text and reject["reason"] in text
    assert main(["trace", reject["id"], str(results), "--json"]) == 0
    [entity] = json.loads(capsys.readouterr().out)["matches"]
    assert [(s["stage"], s["status"]) for s in entity["steps"]][-1] == ("grounding", REJECTED)
    assert main(["trace", reject["id"] + "-nope", str(results)]) == 1
    assert "did you mean" in capsys.readouterr().err
