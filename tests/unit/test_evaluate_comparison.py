"""The checkpoint comparison table and the evaluation jobs' counts (groundflow.evaluate.comparison)."""

import math

import pytest

from groundflow.evaluate.comparison import comparison_table, job_counts, job_rejects, long_table, table_markdown


def result(metrics, n, rejects=(), n_records=None, limit=None):
    return {"metrics": metrics, "n_samples": n, "rejects": list(rejects),
            "n_records": n + len(rejects) if n_records is None else n_records, "limit": limit}


BENCHMARKS = [{"name": "pope_form", "metric": "pope_accuracy", "paper_delta": None},
              {"name": "mme", "metric": "mme_perception_score", "paper_delta": "+12.3"}]


def results():
    bad = {"question_id": "q9", "line": 9, "file": "yes_no.jsonl", "reason": "image not found"}
    return {
        "pope_form": {"base": result({"pope_accuracy": 0.5, "pope_f1_score": 0.1}, 10, [bad]),
                      "cvc": result({"pope_accuracy": 0.75, "pope_f1_score": 0.2}, 10, [bad])},
        "mme": {"base": result({"mme_perception_score": 1500.0}, 4), "cvc": result({"mme_perception_score": 1480.5}, 4)},
    }


def test_the_table_has_one_row_per_benchmark_with_deltas_to_the_first_model():
    table = comparison_table(results(), benchmarks=BENCHMARKS, models=["base", "cvc"])
    assert list(table.columns) == ["benchmark", "metric", "base", "cvc", "delta_cvc", "n", "rejected", "paper_delta"]
    assert table["benchmark"].tolist() == ["pope_form", "mme"]
    assert table["delta_cvc"].tolist() == pytest.approx([0.25, -19.5])
    assert table["n"].tolist() == [10, 4]
    assert table["rejected"].tolist() == [1, 0]
    assert table["paper_delta"].tolist() == ["", "+12.3"]


def test_a_metric_the_job_did_not_report_is_an_error_naming_job_and_metrics():
    broken = results()
    del broken["mme"]["cvc"]["metrics"]["mme_perception_score"]
    with pytest.raises(KeyError, match=r"mme / cvc.*mme_perception_score"):
        comparison_table(broken, benchmarks=BENCHMARKS, models=["base", "cvc"])


def test_checkpoints_scored_on_different_items_are_not_compared():
    broken = results()
    broken["mme"]["cvc"]["n_samples"] = 3
    with pytest.raises(ValueError, match="different numbers of items"):
        comparison_table(broken, benchmarks=BENCHMARKS, models=["base", "cvc"])


def test_a_missing_result_names_benchmark_and_model():
    broken = results()
    del broken["pope_form"]["cvc"]
    with pytest.raises(KeyError, match="pope_form: no result for model cvc"):
        comparison_table(broken, benchmarks=BENCHMARKS, models=["base", "cvc"])


def test_markdown_signs_deltas_and_lists_notes():
    table = comparison_table(results(), benchmarks=BENCHMARKS, models=["base", "cvc"])
    text = table_markdown(table, notes=["the paper: +5.4 % on four tasks"])
    lines = text.splitlines()
    assert lines[0] == "| benchmark | metric | base | cvc | delta_cvc | n | rejected | paper_delta |"
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|---|"
    assert "| pope_form | pope_accuracy | 0.500 | 0.750 | +0.250 | 10 | 1 | – |" in lines
    assert "| mme | mme_perception_score | 1500.000 | 1480.500 | -19.500 | 4 | 0 | +12.3 |" in lines
    assert lines[-1] == "- the paper: +5.4 % on four tasks"


def test_job_counts_add_up_or_name_the_job():
    counts = job_counts(results())
    assert counts.to_dict("records")[0] == {"stage": "eval:pope_form:base", "in": 11, "out": 10, "rejected": 1}
    assert len(counts) == 4
    broken = results()
    broken["mme"]["base"]["n_records"] = 7
    with pytest.raises(ValueError, match="eval:mme:base: 7 records read but 4 scored and 0 rejected"):
        job_counts(broken)
    # a run on a limit scores fewer items than it read: not an error
    limited = results()
    limited["mme"]["base"].update(n_records=7, limit=4)
    assert job_counts(limited)["in"].tolist()[2] == 7


def test_job_rejects_keep_every_reason():
    rejects = job_rejects(results())
    assert rejects.to_dict("records") == [
        {"stage": "eval:pope_form:base", "id": "q9", "reason": "image not found"},
        {"stage": "eval:pope_form:cvc", "id": "q9", "reason": "image not found"}]


def test_long_table_has_a_bar_per_model_and_benchmark():
    table = comparison_table(results(), benchmarks=BENCHMARKS, models=["base", "cvc"])
    long = long_table(table, ["base", "cvc"])
    assert len(long) == 4
    row = long[(long["dataset"] == "mme") & (long["model"] == "cvc")].iloc[0]
    assert row["setting"] == "mme_perception_score" and math.isclose(row["score"], 1480.5)
