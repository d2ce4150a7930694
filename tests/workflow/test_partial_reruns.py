"""Partial re-runs, as docs/operations.md ("Partial re-runs") tells a user to do them: one stage of
one shard, a changed threshold, one target or stage only, one stage on a table the user supplies.

Each real run starts from a copy of one finished `cvc_prep` run (cvc_reference.py) and checks what
Snakemake ran (its job log) and which files were rewritten (mtime) or changed (sha256).
"""
import json
import re

import pandas as pd
import pytest
import yaml

from cvc_reference import REFERENCE_OVERRIDES, copy_run, file_states, jobs_run, reference_run
from snakemake_runner import make_run_dir, snakemake

pytestmark = pytest.mark.workflow

CVC_STAGES = ["images", "entities", "causality", "grounding", "segmentation", "occlusion", "instructions"]

UPSTREAM_OF_OCCLUSION = tuple(
    f"results/cvc/{stage}/"
    for stage in ["ingest", "images", "entities", "causality", "grounding", "segmentation", "masks"]
) + ("resources/",)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def log_of(out) -> str:
    return out.stdout + out.stderr


def rewritten(before: dict, after: dict) -> set[str]:
    return {path for path in after if path not in before or after[path][0] != before[path][0]}


def test_one_stage_of_one_shard_reruns_with_only_what_depends_on_it(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    before = file_states(run)
    out = snakemake(run, "cvc_prep", "--cores", "2", "--forcerun", "results/cvc/occlusion/1.parquet")
    assert jobs_run(log_of(out)) == {
        ("cvc_occlusion", "shard=1"), ("cvc_instructions", "shard=1"), ("cvc_gather", ""),
        ("plot_cvc_occluded", ""), ("cvc_prep", ""),
    }
    after = file_states(run)
    assert set(after) == set(before)
    shard_1_downstream = {
        p for p in after
        if p.startswith(("results/cvc/occlusion/1.", "results/cvc/occluded/1/",
                         "results/cvc/instructions/1."))
    }
    gathered = {"results/cvc/instances.parquet", "results/cvc/rejects.parquet",
                "results/cvc/stage_counts.tsv", "results/cvc/plots/occluded_examples.png"}
    # shard 0, and shard 1 upstream of occlusion, are not touched at all
    assert rewritten(before, after) == shard_1_downstream | gathered
    # same inputs, same code: the re-run gives the same bytes, except the timings in counts files
    changed = {p for p in after if after[p][1] != before[p][1]}
    assert changed <= {"results/cvc/occlusion/1.counts.json", "results/cvc/instructions/1.counts.json"}


def test_a_changed_threshold_reruns_only_the_stages_that_read_it(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["cvc"]["occlusion"]["min_coverage"] == 0.9
    config["cvc"]["occlusion"]["min_coverage"] = 0.8
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = file_states(run)

    out = log_of(snakemake(run, "cvc_prep", "--cores", "2"))
    assert jobs_run(out) == {
        ("cvc_occlusion", "shard=0"), ("cvc_occlusion", "shard=1"), ("cvc_instructions", "shard=0"),
        ("cvc_instructions", "shard=1"), ("cvc_gather", ""), ("plot_cvc_occluded", ""), ("cvc_prep", ""),
    }
    # why occlusion ran (the same reason `snakemake cvc_prep -n` gives beforehand)
    assert re.search(
        r"rule cvc_occlusion:\n(?:[ \t]+.*\n)*?[ \t]+reason: Params have changed since last execution", out)
    after = file_states(run)
    upstream = [p for p in before if p.startswith(UPSTREAM_OF_OCCLUSION)]
    assert upstream and all(after[p] == before[p] for p in upstream)
    assert all(p in rewritten(before, after) for p in after if p.startswith("results/cvc/occlusion/"))

    # the new threshold took effect: the demo's one record occluded 0.80 < 0.9 is kept now
    old = pd.read_parquet(reference / "results/cvc/occlusion/0.rejects.parquet")
    new = pd.read_parquet(run / "results/cvc/occlusion/0.rejects.parquet")
    assert len(new) < len(old)
    counts = json.loads((run / "results/cvc/occlusion/0.counts.json").read_text())
    assert counts["produced_by"]["min_coverage"] == 0.8


def test_one_target_or_stage_plans_only_its_own_jobs(tmp_path):
    plan_run = make_run_dir(tmp_path / "plan", {"shards": 2})  # both methods, as the default
    prep = jobs_run(log_of(snakemake(plan_run, "cvc_prep", "-n")))
    rules = {rule for rule, _ in prep}
    for stage in CVC_STAGES:
        assert {(f"cvc_{stage}", "shard=0"), (f"cvc_{stage}", "shard=1")} <= prep
    assert not [r for r in rules if r.startswith("cings")]
    assert not rules & {"cvc_trials", "cvc_extraction", "cvc_checking", "cvc_hybrid", "cvc_train",
                        "plot_cvc_stage_counts", "plot_cvc_trials", "plot_cvc_train_loss"}
    assert {w for r, w in prep if r == "build_tiny_model"} == {
        "kind=llama", "kind=roberta", "kind=grounding-dino", "kind=sam"}

    cings = jobs_run(log_of(snakemake(plan_run, "cings", "-n")))
    assert "cings_train" in {rule for rule, _ in cings}
    assert not [r for r, _ in cings if r.startswith(("cvc", "plot_cvc"))]
    assert {w for r, w in cings if r == "build_tiny_model"} == {"kind=llama3", "kind=clip"}

    until = jobs_run(log_of(snakemake(plan_run, "cvc_prep", "-n", "--until", "cvc_causality")))
    assert {rule for rule, _ in until} == {
        "cvc_fixture", "cvc_ingest", "cvc_images", "cvc_entities", "cvc_causality", "build_tiny_model"}
    assert {w for r, w in until if r == "build_tiny_model"} == {"kind=llama", "kind=roberta"}

    # one real run up to the first stage: no model is built, nothing past it is made
    run = make_run_dir(tmp_path / "run", REFERENCE_OVERRIDES)
    out = snakemake(run, "cvc_prep", "--cores", "2", "--until", "cvc_images")
    assert jobs_run(log_of(out)) == {("cvc_fixture", ""), ("cvc_ingest", ""),
                                     ("cvc_images", "shard=0"), ("cvc_images", "shard=1")}
    assert all((run / f"results/cvc/images/{shard}.parquet").is_file() for shard in (0, 1))
    assert not (run / "resources/models").exists()
    assert {p.split("/")[2] for p in file_states(run, "results")} == {"images", "ingest"}


def test_a_stage_runs_on_records_the_user_supplies(reference, tmp_path):
    """Causality on the user's own entity table: a fresh run folder holding only that table (at the
    stage's input path) and the model; no captions, so nothing upstream could have been run."""
    run = make_run_dir(tmp_path / "run", REFERENCE_OVERRIDES)
    theirs = pd.read_parquet(reference / "results/cvc/entities/0.parquet").iloc[:9].copy()
    theirs["id"] = [f"mine-{i}" for i in range(len(theirs))]
    table = run / "results/cvc/entities/0.parquet"
    table.parent.mkdir(parents=True)
    theirs.to_parquet(table, index=False)
    # a model folder the user already has (copied without Snakemake's records of building it)
    model = "resources/models/tiny-roberta"
    copy_run(reference / model, run / model)
    before = file_states(run)

    out = snakemake(run, "results/cvc/causality/0.parquet", "--allowed-rules", "cvc_causality",
                    "build_tiny_model", "--cores", "2")
    assert jobs_run(log_of(out)) == {("cvc_causality", "shard=0")}
    after = file_states(run)
    assert after[str(table.relative_to(run))] == before[str(table.relative_to(run))]
    assert after[model + "/config.json"] == before[model + "/config.json"]
    assert set(file_states(run, "results")) == {
        "results/cvc/entities/0.parquet", "results/cvc/causality/0.parquet",
        "results/cvc/causality/0.rejects.parquet", "results/cvc/causality/0.counts.json"}
    assert not (run / "resources/fixtures").exists()

    kept = pd.read_parquet(run / "results/cvc/causality/0.parquet")
    rejected = pd.read_parquet(run / "results/cvc/causality/0.rejects.parquet")
    assert set(kept["id"]) | set(rejected["id"]) == set(theirs["id"])
    assert len(kept) > 0
    counts = json.loads((run / "results/cvc/causality/0.counts.json").read_text())
    assert counts["in"] == len(theirs)
