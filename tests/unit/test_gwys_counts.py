"""GWYS' stage counts: every stage adds up (shards summed), every reject is on file with its stage,
and a GRPO run's skipped rows count as its rejects."""
import json

import pandas as pd
import pytest

from groundflow.gwys.counts import gather_counts, stage_row, train_row
from groundflow.io.artifacts import write_table


def _stage_files(tmp_path, name, counts, rejected_ids):
    counts_file = tmp_path / f"{name}.counts.json"
    counts_file.write_text(json.dumps(counts))
    rejects_file = tmp_path / f"{name}.rejects.parquet"
    write_table(pd.DataFrame({"stage": name, "id": rejected_ids, "reason": [f"bad {i}" for i in rejected_ids]}),
                rejects_file)
    return str(counts_file), str(rejects_file)


def test_stages_shards_and_runs_add_up_into_one_table(tmp_path):
    sft = _stage_files(tmp_path, "sft", {"in": 5, "out": 3, "rejected": 2}, ["a", "b"])
    shard0 = _stage_files(tmp_path, "r0", {"in": 3, "out": 3, "rejected": 0}, [])
    shard1 = _stage_files(tmp_path, "r1", {"in": 2, "out": 1, "rejected": 1}, ["c"])
    summary = tmp_path / "ours.json"
    summary.write_text(json.dumps({"records": 3, "trained_records": 2, "skipped": [{"id": "v1", "reason": "video"}]}))
    counts = gather_counts(stages={"sft_data": ([sft[0]], [sft[1]]),
                                   "rollouts": ([shard0[0], shard1[0]], [shard0[1], shard1[1]])},
                           summaries={"ours": str(summary)}, counts_out=str(tmp_path / "counts.tsv"),
                           rejects_out=str(tmp_path / "rejects.parquet"))
    assert counts.to_dict("records") == [{"stage": "sft_data", "in": 5, "out": 3, "rejected": 2},
                                         {"stage": "rollouts", "in": 5, "out": 4, "rejected": 1},
                                         {"stage": "grpo:ours", "in": 3, "out": 2, "rejected": 1}]
    rejects = pd.read_parquet(tmp_path / "rejects.parquet")
    assert rejects.groupby("stage").size().to_dict() == {"sft_data": 2, "rollouts": 1, "grpo:ours": 1}
    assert pd.read_csv(tmp_path / "counts.tsv", sep="\t")["rejected"].sum() == len(rejects)


def test_counts_that_do_not_add_up_or_lost_rejects_fail_loudly(tmp_path):
    with pytest.raises(ValueError, match="in 4 != out 3 \\+ rejected 0"):
        stage_row("pool", [{"in": 4, "out": 3, "rejected": 0}])
    with pytest.raises(ValueError, match="grpo:ours"):
        train_row("ours", {"records": 3, "trained_records": 3, "skipped": [{"id": "x", "reason": "video"}]})
    missing = _stage_files(tmp_path, "sft", {"in": 5, "out": 3, "rejected": 2}, ["a"])  # one reject not on file
    with pytest.raises(AssertionError, match="1 rejects on file, but the stages count 2"):
        gather_counts(stages={"sft_data": ([missing[0]], [missing[1]])}, summaries={},
                      counts_out=str(tmp_path / "c.tsv"), rejects_out=str(tmp_path / "r.parquet"))
