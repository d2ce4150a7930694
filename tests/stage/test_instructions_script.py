"""The instruction stage's script in the paper's free mode on an endpoint (plain generation: no
LM scoring nor guided decoding needed), with a user's prompt file, against the fake `vllm serve`
(tests/data/fake_openai_server.py, whose answer echoes the prompt's user text)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from groundflow.cvc.instructions import load_instruction_prompt
from groundflow.io import read_table, write_table
from managed_fake_server import managed_spec
from script_harness import FakeSnakemake, run_script, stage_outputs

KEY_ENV = "GROUNDFLOW_TEST_INSTRUCTIONS_KEY"


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def _run(tmp_path, prompt_file):
    records = pd.DataFrame({"id": ["a-dog", "b-people"], "label": ["dog", "people"],
                            "caption": ["A dog runs.", "People wait."]})
    write_table(records, tmp_path / "records.parquet")
    opts = {"mode": "free", "prompt": prompt_file, "max_new_tokens": 100, "batch_size": 4, "chunk_size": 8,
            "object_types": ["object"]}
    smk = FakeSnakemake(
        input={"records": str(tmp_path / "records.parquet")}, output=stage_outputs(tmp_path, "instructions"),
        params={"generation": managed_spec(KEY_ENV), "opts": opts, "progress_dir": str(tmp_path / ".progress")},
        log=[str(tmp_path / "logs" / "0.log")],
    )
    run_script("cvc_instructions.py", smk)
    return smk


def test_free_mode_runs_on_an_endpoint_with_the_users_prompt(tmp_path):
    # the echoing server writes back the user text: its first paragraph is a usable question
    prompt = tmp_path / "original_prompt.txt"
    prompt.write_text("There is a thing under the blocks. Please answer this.\nWhat might it be?\n\nHidden: {label}\n")
    smk = _run(tmp_path, str(prompt))
    kept = read_table(smk.output.kept)
    assert list(kept["id"]) == ["a-dog", "b-people"]
    assert set(kept["instruction"]) == {"There is a thing under the blocks. Please answer this.\nWhat might it be?"}
    counts = json.loads((tmp_path / "instructions.counts.json").read_text())
    assert (counts["in"], counts["out"], counts["rejected"]) == (2, 2, 0)
    log = (tmp_path / "logs" / "0.log").read_text()
    assert "guided" not in log  # no type selection in free mode
    assert load_instruction_prompt("free", prompt).version.startswith("original_prompt-")


def test_free_mode_rejects_what_cannot_be_split_with_the_reason(tmp_path):
    # our prompt's first paragraph, echoed, has no question mark: nothing is stored in a wrong layout
    smk = _run(tmp_path, None)
    assert read_table(smk.output.kept).empty
    reasons = read_table(smk.output.rejects)["reason"].tolist()
    assert len(reasons) == 2 and all("is unusable: no sentence of it ends with '?'" in r for r in reasons)
