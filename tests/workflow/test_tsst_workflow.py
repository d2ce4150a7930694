"""TSST end to end through the real snakemake CLI: the session's demo run (conftest.py `demo`, whose
`methods` include tsst) holds the warm-up, two self-training rounds and every round's evaluation."""
import json

import pandas as pd
import pytest
from PIL import Image

from groundflow.models.spec import ModelSpec
from groundflow.models.value_model import ValueScorer, load_value_model
from groundflow.tsst.prompts import load_question_prompts
from snakemake_runner import make_run_dir, snakemake

pytestmark = pytest.mark.workflow

ROUNDS = [0, 1, 2]
TRAIN_SETS = ["demo_train", "demo_vcr"]
SETS = TRAIN_SETS + ["demo_eval"]


@pytest.fixture(scope="module")
def tsst(demo):
    return demo / "results" / "tsst"


def test_tsst_alone_plans_no_other_method(tmp_path):
    folder = make_run_dir(tmp_path, {"methods": ["tsst"]})
    out = snakemake(folder, "--summary").stdout.splitlines()
    rules = {line.split("\t")[2] for line in out[1:] if line.strip()}
    assert {"tsst_search", "tsst_train_value", "tsst_eval_direct", "tsst_round_data"} <= rules
    assert not [r for r in rules if not r.startswith(("tsst_", "plot_tsst_")) and r != "build_tiny_model"], rules


def test_every_bad_question_line_is_rejected_with_its_reason_and_counts_add_up(tsst, demo):
    summary = json.loads((demo / "resources" / "fixtures" / "tsst" / "summary.json").read_text())
    planted = {"demo_train": summary["bad"]["train"], "demo_vcr": summary["bad"]["vcr"], "demo_eval": summary["bad"]["eval"]}
    for name in SETS:
        counts = json.loads((tsst / "questions" / f"{name}.counts.json").read_text())
        assert counts["in"] == counts["out"] + counts["rejected"], name
        rejects = pd.read_parquet(tsst / "questions" / f"{name}.rejects.parquet")
        reasons = dict(zip(rejects["id"], rejects["reason"]))
        assert len(reasons) == len(planted[name]) == counts["rejected"], name
        for case in planted[name]:
            assert case["reason"] in reasons[case["id"]], (name, case, reasons)


def test_each_round_keeps_its_data_counts_and_both_checkpoints(tsst):
    warmup = json.loads((tsst / "round0" / "data" / "counts.json").read_text())
    assert warmup["policy_records"] > 0 and warmup["value_records"] > warmup["policy_records"]
    previous = len(json.loads((tsst / "round0" / "data" / "policy.json").read_text()))
    for it in ROUNDS[1:]:
        counts = json.loads((tsst / f"round{it}" / "data" / "counts.json").read_text())
        # D+ (one record per question with a correct chain) and D_v, on top of the earlier rounds' data
        assert counts["questions"] > 0 and 0 <= counts["with_correct_chain"] <= counts["questions"]
        assert counts["new_dplus_records"] == counts["with_correct_chain"]
        assert counts["dplus_records"] == previous + counts["new_dplus_records"]
        previous = counts["dplus_records"]
        for name in TRAIN_SETS:
            search = json.loads((tsst / f"round{it}" / "search" / name / "shard0.counts.json").read_text())
            assert search["in"] == search["out"] + search["rejected"]
    for it in ROUNDS:
        for kind in ("policy", "value"):
            summary = json.loads((tsst / f"round{it}" / kind / "train_summary.json").read_text())
            assert summary["steps"] > 0 and (tsst / f"round{it}" / kind / "model" / "config.json").is_file()


def test_a_reloaded_value_model_gives_the_scores_its_search_recorded(tsst, demo):
    """Round 2 searched with round 1's value model: scoring its chains again from the saved
    checkpoint reproduces the values the search wrote (head saved, merged, reloaded)."""
    search = pd.read_parquet(tsst / "round2" / "search" / "demo_train" / "shard0.parquet")
    questions = pd.read_parquet(tsst / "questions" / "demo_train.parquet").set_index("id")
    rows = [(qid, chain) for qid, chains in zip(search["id"], search["chains"]) for chain in chains][:6]
    assert rows, "round 2's search finished no chain on the demo's train set"
    model, processor = load_value_model(ModelSpec.from_config({"path": str(tsst / "round1" / "value" / "model"),
                                                               "device": "cpu"}))
    scorer = ValueScorer(model, processor, batch_size=4)
    prompts = load_question_prompts()
    texts, images = [], []
    for qid, _ in rows:
        question = questions.loc[qid]
        has_image = isinstance(question["image"], str)
        texts.append(prompts.render(question["question"], list(question["choices"]), has_image=has_image))
        image_path = demo / "resources" / "fixtures" / "tsst" / "images" / question["image"] if has_image else None
        images.append(Image.open(image_path).convert("RGB") if image_path else None)
    scores = scorer.score(texts, [chain["text"] for _, chain in rows], images, [qid for qid, _ in rows])
    assert scores == pytest.approx([chain["score"] for _, chain in rows], abs=1e-4)


def test_the_eval_table_has_every_round_in_both_modes_and_its_plot(tsst, demo):
    table = pd.read_parquet(tsst / "eval" / "demo_eval" / "table.parquet")
    assert sorted(table["round"].unique()) == ROUNDS
    for it in ROUNDS:
        at = table[table["round"] == it]
        assert set(at.loc[at["mode"] == "direct", "metric"]) == {"accuracy"}
        assert {"greedy_acc", "absolute_acc", "voting_acc", "voting_acc_original", "majority_acc"} <= set(
            at.loc[at["mode"] == "search", "metric"])
    valid = json.loads((tsst / "questions" / "demo_eval.counts.json").read_text())["out"]
    assert (table.loc[table["metric"] == "accuracy", "n"] == valid).all()  # direct: over every question
    assert table["value"].dropna().between(0, 1).all()
    assert (demo / "results" / "tsst" / "plots" / "eval_demo_eval.png").stat().st_size > 0
