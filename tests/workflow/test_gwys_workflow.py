"""GWYS end to end through the real snakemake CLI: the session's demo run (conftest.py `demo`, whose
`methods` include gwys) holds the cold-start SFT, the reward-variance selection, every GRPO variant
(baseline, ours, one ablation per switch), every model's evaluation and the table."""
import json

import pandas as pd
import pytest
from PIL import Image

from groundflow.generate.backends import ChatPrompt, SamplingParams, make_generator
from groundflow.gwys.prompts import load_question_prompts
from snakemake_runner import make_run_dir, snakemake

pytestmark = pytest.mark.workflow

VARIANTS = ["baseline", "ours", "no_caption", "no_selection", "no_conflict"]
MODELS = ["base", "sft", *VARIANTS]


@pytest.fixture(scope="module")
def gwys(demo):
    return demo / "results" / "gwys"


def test_gwys_alone_plans_no_other_method(tmp_path):
    folder = make_run_dir(tmp_path, {"methods": ["gwys"]})
    out = snakemake(folder, "--summary").stdout.splitlines()
    rules = {line.split("\t")[2] for line in out[1:] if line.strip()}
    assert {"gwys_sft", "gwys_rollouts", "gwys_select", "gwys_grpo", "gwys_eval", "gwys_eval_table"} <= rules
    assert not [r for r in rules if not r.startswith(("gwys_", "plot_gwys_")) and r != "build_tiny_model"], rules


def test_every_bad_record_is_rejected_with_its_reason_and_counts_add_up(gwys, demo):
    summary = json.loads((demo / "resources" / "fixtures" / "gwys" / "summary.json").read_text())
    for name, counts_file, rejects_file in (("cot", "sft.counts.json", "sft.rejects.parquet"),
                                            ("pool", "pool.counts.json", "pool.rejects.parquet"),
                                            ("eval", "demo_eval.counts.json", "demo_eval.rejects.parquet")):
        counts = json.loads((gwys / "data" / counts_file).read_text())
        assert counts["in"] == counts["out"] + counts["rejected"], name
        rejects = pd.read_parquet(gwys / "data" / rejects_file)
        reasons = dict(zip(rejects["id"], rejects["reason"]))
        planted = summary["files"][name]["bad"]
        assert planted and len(reasons) == len(planted) == counts["rejected"], name
        for case in planted:
            assert case["reason"] in reasons[case["id"]], (name, case, reasons)


def test_the_selection_classes_every_rolled_out_sample_and_keeps_the_top_medium_share(gwys):
    pool = pd.read_parquet(gwys / "data" / "pool.parquet")
    table = pd.read_parquet(gwys / "selection" / "table.parquet")
    kept = pd.read_parquet(gwys / "selection" / "train_pool.parquet")
    assert sorted(table["id"]) == sorted(pool["id"])
    assert set(table["class"]) <= {"hard", "easy", "medium"} and len(kept) > 0
    medium = table[table["class"] == "medium"].sort_values("variance", ascending=False)
    assert set(kept["id"]) == set(table.loc[table["kept"], "id"]) <= set(medium["id"])
    # the kept ones are the most variable Medium samples
    assert table.loc[table["kept"], "variance"].min() >= medium["variance"].iloc[len(kept) - 1]
    rollouts = pd.read_parquet(gwys / "selection" / "rollouts" / "shard0.parquet")
    assert (rollouts["completions"].map(len) == 8).all()
    assert (rollouts["distinct"] > 1).any(), "every sample's rollouts were one text: sampling did not sample"
    assert (gwys / "plots" / "selection.png").stat().st_size > 0


def test_each_variant_trains_from_its_start_with_its_rewards_and_logs_its_terms(gwys):
    for variant in VARIANTS:
        summary = json.loads((gwys / "grpo" / variant / "train_summary.json").read_text())
        assert summary["steps"] == 3 and summary["identical_groups"] == 0, variant
        steps = summary["log_history"]
        assert len(steps) == 3 and all("kl" in s and "reward" in s for s in steps), variant
        with_conflict = variant != "baseline" and variant != "no_conflict"
        assert all(("infoNCE" in s) == with_conflict for s in steps), variant
        with_caption = "caption" in summary["rewards"]
        assert (summary["judge_failures"] == 0) if with_caption else summary["judge_failures"] is None, variant
    baseline = json.loads((gwys / "grpo" / "baseline" / "train_summary.json").read_text())
    ours = json.loads((gwys / "grpo" / "ours" / "train_summary.json").read_text())
    assert baseline["form"] == "think_answer" and baseline["rewards"] == ["accuracy", "format"]
    assert baseline["model"]["path"].endswith("tiny-gwys-qwen-vl")
    assert ours["form"] == "four_tag" and ours["rewards"] == ["accuracy", "format", "caption"]
    assert ours["model"]["path"] == "results/gwys/sft/model" and ours["reward_weights"] == [1.0, 0.1, 1.0]
    kept = len(pd.read_parquet(gwys / "selection" / "train_pool.parquet"))
    pool = len(pd.read_parquet(gwys / "data" / "pool.parquet"))
    assert ours["records"] == kept
    assert json.loads((gwys / "grpo" / "no_selection" / "train_summary.json").read_text())["records"] == pool


def test_trained_checkpoints_load_and_answer_in_their_form(gwys, demo):
    pool = pd.read_parquet(gwys / "data" / "pool.parquet")
    row = pool.iloc[0]
    image = Image.open(demo / "resources" / "fixtures" / "gwys" / row["media"]).convert("RGB")
    for variant, form in (("ours", "four_tag"), ("baseline", "think_answer")):
        generator = make_generator({"backend": "hf", "model": {"path": str(gwys / "grpo" / variant / "model"),
                                                               "device": "cpu"}}, kind="vision")
        text = load_question_prompts(form).user_text(row["format_question"], row["problem_type"])
        [[answer]] = generator.generate([ChatPrompt(messages=({"role": "user", "content": text},), image=image)],
                                        SamplingParams(max_new_tokens=16, do_sample=False))
        assert isinstance(answer, str), variant
        if variant == "ours":  # the SFT start wrote text; the random base may stop at once
            assert answer.strip()


def test_the_eval_table_has_every_model_and_its_plots(gwys):
    table = pd.read_csv(gwys / "eval" / "table.tsv", sep="\t", index_col="model")
    assert list(table.index) == MODELS and list(table.columns) == ["demo_eval"]
    assert table["demo_eval"].between(0, 1).all()
    valid = json.loads((gwys / "data" / "demo_eval.counts.json").read_text())["out"]
    for model in MODELS:
        scores = json.loads((gwys / "eval" / model / "scores.json").read_text())["sets"]["demo_eval"]
        assert scores["n"] == valid and scores["accuracy"] == pytest.approx(table.loc[model, "demo_eval"], abs=1e-4)
    assert "| ours |" in (gwys / "eval" / "table.md").read_text()
    for plot in ("training.png", "eval.png"):
        assert (gwys / "plots" / plot).stat().st_size > 0
