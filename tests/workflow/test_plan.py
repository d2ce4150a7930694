"""Dry runs: the DAG plans from config alone, grows with shards, and bad config stops it."""
import re

import pytest
import yaml

from snakemake_runner import ROOT, make_run_dir, snakemake

pytestmark = pytest.mark.workflow


def job_counts(output: str) -> dict[str, int]:
    table = output[output.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.parametrize("shards", [3, 7])
def test_paper_preset_plans_one_job_per_shard_per_stage(tmp_path, shards):
    run = make_run_dir(tmp_path)
    (run / "preset.yaml").write_text((ROOT / "configs" / "cvc-paper.yaml").read_text())
    (run / "overlay.yaml").write_text(yaml.safe_dump({"shards": shards}))
    out = snakemake(run, "-n", "--quiet", "rules", "--configfile", "preset.yaml", "overlay.yaml")
    counts = job_counts(out.stdout + out.stderr)
    for stage in ["images", "entities", "causality", "grounding", "segmentation", "occlusion", "instructions"]:
        assert counts[f"cvc_{stage}"] == shards
    assert counts["cvc_ingest"] == 1 and counts["cvc_gather"] == 1
    assert "build_tiny_model" not in counts  # hub ids and checkpoints are never built
    assert not (run / "results").exists()


def test_unknown_key_stops_the_run_naming_it(tmp_path):
    run = make_run_dir(tmp_path, {"cvc": {"occlusion": {"min_coverrage": 0.1}}})
    out = snakemake(run, "-n", check=False)
    assert out.returncode != 0
    assert "unknown key 'cvc.occlusion.min_coverrage'" in out.stdout + out.stderr


def test_wrong_type_stops_the_run_naming_it(tmp_path):
    run = make_run_dir(tmp_path, {"cvc": {"grounding": {"dino_box_threshold": "high"}}})
    out = snakemake(run, "-n", check=False)
    assert out.returncode != 0
    assert "'cvc.grounding.dino_box_threshold': 'high' is not of type 'number'" in out.stdout + out.stderr


@pytest.mark.parametrize("preset, own, other", [("cvc-paper", "cvc_", "cings_"), ("cings-paper", "cings_", "cvc_")])
def test_a_run_folder_made_from_one_preset_plans_that_method_alone(tmp_path, preset, own, other):
    from groundflow.cli import main

    run = tmp_path / "run"
    assert main(["init", str(run), "--preset", preset]) == 0
    out = snakemake(run, "-n", "--quiet", "rules")
    counts = job_counts(out.stdout + out.stderr)
    assert any(rule.startswith(own) for rule in counts)
    assert not any(rule.startswith(other) for rule in counts), counts
    assert "build_tiny_model" not in counts
    if preset == "cings-paper":
        config = yaml.safe_load((run / "config.yaml").read_text())
        datasets, modes = config["cings"]["inference"]["datasets"], config["cings"]["modes"]
        assert counts["cings_train"] == 3 and counts["cings_vl_stage2"] == 2
        # one job per evaluation set x mode, whatever settings each set takes
        assert counts["cings_infer"] == len(datasets) * len(modes) == 39
        assert counts["cings_eval_table"] == 1
        assert counts["cings_pope_answer"] == len(config["cings"]["vl"]["modes"]) == 2


def test_a_user_entity_prompt_is_an_input_so_editing_it_reruns_the_stage(tmp_path):
    run = make_run_dir(tmp_path / "run", {"cvc": {"entities": {"prompt": "my_entities.txt"}}})
    (run / "my_entities.txt").write_text('Caption: "{caption}"\n')
    out = snakemake(run, "-n", "results/cvc/entities/0.parquet")
    text = out.stdout + out.stderr
    job = text[text.index("rule cvc_entities:"):]
    assert "my_entities.txt" in job[: job.index("output:")]
    (run / "my_entities.txt").unlink()
    missing = snakemake(run, "-n", "results/cvc/entities/0.parquet", check=False)
    assert missing.returncode != 0 and "my_entities.txt" in missing.stdout + missing.stderr


@pytest.mark.parametrize("stage", ["instructions", "extraction"])
def test_a_user_instruction_or_extraction_prompt_is_an_input_of_its_stage(tmp_path, stage):
    run = make_run_dir(tmp_path / "run", {"cvc": {stage: {"prompt": f"my_{stage}.txt"}}})
    (run / f"my_{stage}.txt").write_text("{label}\n" if stage == "instructions" else "{rationale}\n")
    out = snakemake(run, "-n", f"results/cvc/{stage}/0.parquet")
    text = out.stdout + out.stderr
    job = text[text.index(f"rule cvc_{stage}:"):]
    assert f"my_{stage}.txt" in job[: job.index("output:")]
    (run / f"my_{stage}.txt").unlink()
    missing = snakemake(run, "-n", f"results/cvc/{stage}/0.parquet", check=False)
    assert missing.returncode != 0 and f"my_{stage}.txt" in missing.stdout + missing.stderr
