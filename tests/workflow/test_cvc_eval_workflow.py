"""CVC's evaluation end to end through the real snakemake CLI: the session's demo run (conftest.py
`demo`) holds the base and the CVC-trained tiny LLaVA on the drawn POPE-form and multiple-choice
benchmarks (lmms-eval) and on the held-out occluded-object probe, gathered into one table; a
benchmark file that is missing stops its job naming the path."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from groundflow.cvc.probe import image_key
from snakemake_runner import make_run_dir, snakemake

pytestmark = pytest.mark.workflow

MODELS = ["base", "cvc"]
BENCHMARKS = ["pope_form", "multiple_choice", "occluded_probe"]


@pytest.fixture(scope="module")
def cvc(demo):
    return demo / "results" / "cvc"


def test_one_table_compares_base_and_trained_on_every_benchmark(cvc):
    table = pd.read_csv(cvc / "eval" / "table.tsv", sep="\t", keep_default_na=False)
    assert table["benchmark"].tolist() == BENCHMARKS
    assert table["metric"].tolist() == ["pope_accuracy", "mc_accuracy", "probe_accuracy"]
    for row in table.to_dict("records"):
        assert 0.0 <= row["base"] <= 1.0 and 0.0 <= row["cvc"] <= 1.0, row
        assert row["delta_cvc"] == pytest.approx(row["cvc"] - row["base"], abs=1e-4)
        assert row["n"] > 0
    markdown = (cvc / "eval" / "table.md").read_text()
    assert markdown.startswith("| benchmark | metric | base | cvc | delta_cvc |")
    assert "held out of trial learning" in markdown
    assert (cvc / "plots" / "eval.png").stat().st_size > 0


def test_every_job_scored_or_rejected_each_record_and_status_lists_them(cvc, demo):
    counts = pd.read_csv(cvc / "eval_stage_counts.tsv", sep="\t")
    stages = [f"eval:{b}:{m}" for b in BENCHMARKS for m in MODELS]
    assert sorted(counts["stage"]) == sorted(stages)
    assert (counts["in"] == counts["out"] + counts["rejected"]).all()
    rejects = pd.read_parquet(cvc / "eval_rejects.parquet")
    # the drawn benchmark files plant one bad record each; both checkpoints reject it alike
    for benchmark in ("pope_form", "multiple_choice"):
        for model in MODELS:
            stage = f"eval:{benchmark}:{model}"
            assert counts.set_index("stage").loc[stage, "rejected"] == (rejects["stage"] == stage).sum() >= 1
    for model in MODELS:
        result = json.loads((cvc / "eval" / "pope_form" / f"{model}.json").read_text())
        assert result["n_samples"] == len(result["samples"]) > 0
        assert {"pope_accuracy", "pope_f1_score", "pope_yes_ratio"} <= set(result["metrics"])
    status = subprocess.run([sys.executable, "-m", "groundflow.cli", "status", "results"], cwd=demo,
                            capture_output=True, text=True, check=True).stdout
    assert "cvc (eval)" in status and "eval:occluded_probe:cvc" in status


def shards(folder):
    """The shard tables of a stage folder ({shard}.parquet, not its rejects)."""
    paths = sorted(p for p in folder.glob("*.parquet") if p.stem.isdigit())
    assert paths, folder
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def test_probe_pictures_never_enter_the_hybrid_data(cvc):
    probe = shards(cvc / "probe")
    assert len(probe) > 0
    trials = shards(cvc / "trials")
    held_out = {image_key(path) for path in probe["image"]}
    assert not held_out & {image_key(path) for path in trials["image"]}
    hybrid = json.loads((cvc / "hybrid" / "train.json").read_text())
    hybrid_pictures = {image_key(r["image"].rsplit("/", 1)[-1].split("-", 1)[0]) for r in hybrid if r.get("image")}
    hybrid_pictures |= {image_key(r["image"]) for r in hybrid if r.get("image")}
    assert not held_out & hybrid_pictures
    answers = pd.read_parquet(cvc / "eval" / "occluded_probe" / "cvc.answers.parquet")
    assert sorted(answers["id"]) == sorted(probe["id"])


def test_a_missing_benchmark_file_stops_its_job_naming_the_path(tmp_path):
    missing = "data/benchmarks/not-downloaded/test.jsonl"
    run = make_run_dir(tmp_path / "run", {"methods": ["cvc"], "cvc": {"eval": {"benchmarks": [
        {"name": "pope_form", "task": "groundflow_yes_no", "metric": "pope_accuracy",
         "data_files": {"test": missing}}]}}})
    out = snakemake(run, "--cores", "1", "results/cvc/eval/pope_form/base.json", check=False)
    assert out.returncode != 0
    log = (run / "logs" / "cvc" / "eval" / "pope_form" / "base.log").read_text()
    assert "FileNotFoundError" in log and missing in log, log[-2000:]
    assert not (run / "results" / "cvc" / "eval" / "pope_form" / "base.json").exists()
