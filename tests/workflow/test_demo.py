"""The embedded default, end to end through the real snakemake CLI."""
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from groundflow.cvc.fixture import make_fixture
from groundflow.io.schemas import table_schema
from snakemake_runner import snakemake

pytestmark = pytest.mark.workflow

STAGES = ["ingest", "images", "entities", "causality", "grounding", "segmentation", "occlusion", "instructions"]

# `demo`: the embedded default run once per session (conftest.py), shared with test_report.py


def test_every_stage_adds_up_and_takes_both_branches(demo):
    counts = pd.read_csv(demo / "results/cvc/stage_counts.tsv", sep="\t").set_index("stage")
    assert list(counts.index) == STAGES
    assert (counts["in"] == counts["out"] + counts["rejected"]).all()
    assert (counts["out"] > 0).all(), counts
    assert (counts["rejected"] > 0).all(), counts
    rejects = pd.read_parquet(demo / "results/cvc/rejects.parquet")
    per_stage = rejects.groupby("stage").size()
    for stage in STAGES:
        assert per_stage[stage] == counts.loc[stage, "rejected"]
    # captions flow into entities; from causality on the unit is the (image, entity) row
    assert counts.loc["images", "in"] == counts.loc["ingest", "out"]
    assert counts.loc["entities", "in"] == counts.loc["images", "out"]
    for before, after in zip(STAGES[3:], STAGES[4:]):
        assert counts.loc[after, "in"] == counts.loc[before, "out"]


def test_instances_table_matches_its_schema_and_files(demo):
    table = pq.read_table(demo / "results/cvc/instances.parquet")
    assert table.schema.equals(table_schema("cvc_instances"), check_metadata=False)
    instances = table.to_pandas()
    counts = pd.read_csv(demo / "results/cvc/stage_counts.tsv", sep="\t").set_index("stage")
    assert len(instances) == counts.loc["instructions", "out"] > 0
    assert instances["id"].is_unique
    for row in instances.itertuples():
        assert (demo / "results/cvc" / row.occluded_image).is_file()
        assert (demo / "results/cvc" / row.mask_path).is_file()
        assert row.label in row.caption.lower()
        assert row.label not in row.instruction.lower().split()
        x0, y0, x1, y1 = row.box
        assert 0 <= x0 < x1 <= row.width and 0 <= y0 < y1 <= row.height


def test_bad_inputs_are_rejected_with_their_reasons_or_converted(demo, tmp_path):
    expected = make_fixture(tmp_path / "fixture")["bad_cases"]  # same seed, same fixture
    rejects = pd.read_parquet(demo / "results/cvc/rejects.parquet").set_index("id")
    instances = pd.concat(pd.read_parquet(p) for p in sorted((demo / "results/cvc/images").glob("[0-9].parquet")))
    for case in expected:
        if case["stage"] is None:  # convertible: kept, original mode recorded
            row = instances.set_index("id").loc[case["id"]]
            assert row["image_mode"] == case["image_mode"], case
        else:
            reason = rejects.loc[case["id"], "reason"]
            assert rejects.loc[case["id"], "stage"] == case["stage"], case
            assert case["reason"] in reason, (case, reason)


def test_a_second_run_has_nothing_to_do(demo):
    out = snakemake(demo, "-n", "--cores", "2")
    assert "Nothing to be done" in out.stdout + out.stderr


def demo_config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def test_trial_learning_counts_add_up_and_checkpoint_generates(demo):
    import json

    import torch
    from PIL import Image

    from groundflow.cvc.trials import rationale_answer_choices
    from groundflow.models.llava import load_llava
    from groundflow.models.spec import ModelSpec

    counts = pd.read_csv(demo / "results/cvc/trial_stage_counts.tsv", sep="\t").set_index("stage")
    assert list(counts.index) == ["trials", "extraction", "checking", "selection"]
    assert (counts["in"] == counts["out"] + counts["rejected"]).all()
    instances = pd.read_parquet(demo / "results/cvc/instances.parquet")
    # every instance but those whose pictures the probe split held out (rules/cvc_eval.smk)
    held_out = sum(json.loads(p.read_text())["probe"] for p in (demo / "results/cvc/probe").glob("*.counts.json"))
    assert held_out > 0 and counts.loc["trials", "in"] == len(instances) - held_out
    mix = json.loads((demo / "results/cvc/hybrid/train.json").read_text())
    instruction = json.loads((demo / "resources/fixtures/cvc/llava_instruct.json").read_text())
    samples = [r for r in mix if "-answer-" in r["id"] or "-cot-" in r["id"]]
    assert len(mix) == len(instruction) + len(samples) and samples
    assert {r["id"].rsplit("-answer-", 1)[0].rsplit("-cot-", 1)[0] for r in samples} <= {
        Path(p).stem for p in instances["occluded_image"]}
    assert len(pd.read_parquet(demo / "results/cvc/hybrid/train.parquet")) == len(mix)

    # instances -> 16 trials each -> 16 checked answers each -> samples by the number correct (k)
    checked = pd.concat(pd.read_parquet(p) for p in sorted((demo / "results/cvc/checking").glob("[0-9].parquet")))
    assert len(checked) == counts.loc["checking", "out"] == counts.loc["selection", "in"]
    n = demo_config(demo)["cvc"]["trials"]["n"]
    span_words = demo_config(demo)["cvc"]["extraction"]["answer_span_words"]
    cot_ids = {r["id"] for r in samples if "-cot-" in r["id"]}
    answer_ids = {r["id"] for r in samples if "-answer-" in r["id"]}
    for row in checked.itertuples():
        assert len(row.trials) == len(row.predictions) == len(row.similarities) == len(row.correct) == n
        assert row.n_correct == sum(row.correct)
        for rationale, prediction in zip(row.trials, row.predictions):  # answers are the rationale's phrases
            assert prediction == "" or f" {prediction}" in rationale_answer_choices(rationale, span_words)
        stem = Path(row.occluded_image).stem
        n_cot = sum(i.startswith(f"{stem}-cot-") for i in cot_ids)
        n_answer = sum(i.startswith(f"{stem}-answer-") for i in answer_ids)
        assert n_cot == (row.n_correct if 1 <= row.n_correct <= 4 else 0)
        assert n_answer == len({p for p, ok in zip(row.predictions, row.correct) if ok})
    k = checked["n_correct"]
    assert (k == 0).sum() == counts.loc["selection", "rejected"]
    # every selection branch is taken: no success, challenging success (CoT), easy success
    assert (k == 0).any() and k.between(1, 4).any() and (k > 4).any()
    summary = json.loads((demo / "results/cvc/train/train_summary.json").read_text())
    assert summary["steps"] == 6
    model, processor = load_llava(ModelSpec(str(demo / "results/cvc/train/model")))
    inputs = processor(images=[Image.new("RGB", (64, 64))], text=["USER: <image>\nWhat is hidden? ASSISTANT:"],
                       return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 4
