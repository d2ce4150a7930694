"""The generating stage scripts stop a managed `vllm serve` when their stage ends.

Each script runs in this process as Snakemake runs it (a `snakemake` object in its globals),
against tests/data/fake_openai_server.py standing in for `vllm serve`. A server tied to the
process's exit (atexit) would still be alive when the script returns; one tied to the stage's
`with open_generator(...)` block is gone by then, which is what these tests check.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from groundflow.cings.eval_fixture import eval_records
from groundflow.cings.inference import RawEntry, validate_records
from groundflow.io import read_table, write_table
from managed_fake_server import gone, managed_spec, server_pid
from script_harness import FakeSnakemake, run_script, stage_outputs

KEY_ENV = "GROUNDFLOW_TEST_SCRIPT_KEY"


def served_spec():
    return managed_spec(KEY_ENV)


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def test_trials_script_stops_its_server_when_the_stage_ends(tmp_path):
    image = tmp_path / "occluded" / "a-dog.jpg"
    image.parent.mkdir()
    Image.fromarray(np.full((16, 16, 3), 120, dtype=np.uint8)).save(image)
    write_table(pd.DataFrame({"id": ["a-dog", "b-cat"], "occluded_image": ["occluded/a-dog.jpg", "occluded/missing.jpg"],
                              "instruction": ["What is hidden?", "And here?"]}), tmp_path / "records.parquet")
    opts = {"n": 2, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 8, "chunk_size": 1}
    smk = FakeSnakemake(
        input={"records": str(tmp_path / "records.parquet")}, output=stage_outputs(tmp_path, "trials"),
        params={"generation": served_spec(), "opts": opts, "seed": 0, "image_dir": str(tmp_path),
                "progress_dir": str(tmp_path / ".progress")},
        log=[str(tmp_path / "logs" / "0.log")],
    )
    run_script("cvc_trials.py", smk)
    server_log = tmp_path / "logs" / "0.server.log"  # beside the job's log
    assert gone(server_pid(server_log))
    assert "stopped on SIGTERM" in server_log.read_text()
    kept = read_table(smk.output.kept)
    assert list(kept["id"]) == ["a-dog"] and len(kept["trials"].iloc[0]) == 2
    assert list(read_table(smk.output.rejects)["id"]) == ["b-cat"]


def test_extraction_script_stops_its_server_when_the_stage_ends(tmp_path):
    write_table(pd.DataFrame({"id": ["a-dog", "b-cat"], "trials": [["It is a dog."], []]}),
                tmp_path / "records.parquet")
    smk = FakeSnakemake(
        input={"records": str(tmp_path / "records.parquet")}, output=stage_outputs(tmp_path, "extraction"),
        params={"generation": served_spec(), "opts": {"max_new_tokens": 8, "chunk_size": 8, "mode": "free", "prompt": None,
                                                   "answer_span_words": 3},
                "progress_dir": str(tmp_path / ".progress")},
        log=[str(tmp_path / "logs" / "0.log")],
    )
    run_script("cvc_extraction.py", smk)
    server_log = tmp_path / "logs" / "0.server.log"
    assert gone(server_pid(server_log))
    assert list(read_table(smk.output.kept)["id"]) == ["a-dog"]
    assert list(read_table(smk.output.rejects)["id"]) == ["b-cat"]


def test_cings_infer_script_serves_every_setting_from_one_server_then_stops_it(tmp_path):
    records = validate_records(RawEntry(i + 1, r) for i, r in enumerate(eval_records(3))).kept
    write_table(records, tmp_path / "records.parquet")
    settings = ["closed_book", "prefilled_1doc"]
    outputs = stage_outputs(tmp_path / "demo" / "context", "predictions")
    server_log = tmp_path / "logs" / "demo" / "context.server.log"
    opts = {"use_gold_docs": True, "max_prompt_tokens": None, "max_new_tokens": 8, "chunk_size": 2,
            "sentence_completion_prompt": None}
    dataset = {"name": "demo", "settings": settings, "ndocs": 2}  # as the rule passes it: resolved
    smk = FakeSnakemake(
        input={"records": str(tmp_path / "records.parquet")}, output=outputs,
        params={"generation": served_spec(), "opts": opts, "dataset": dataset, "system_prompt": "Answer.",
                "progress_dir": str(tmp_path / ".progress" / "demo" / "context"), "server_log": str(server_log)},
        log=[str(tmp_path / "logs" / "demo" / "context.log")],
    )
    run_script("cings_infer.py", smk)
    assert gone(server_pid(server_log))
    assert server_log.read_text().count("(pid ") == 1  # one server for both settings
    predictions = read_table(outputs["kept"])
    assert predictions["setting"].value_counts().to_dict() == {s: len(records) for s in settings}
    assert json.loads(Path(outputs["counts"]).read_text())["out"] == len(records) * len(settings)
