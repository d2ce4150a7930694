"""The entity stage of the workflow against a managed "vllm serve" (the fake server in its place):
the job starts the server from the configured command, waits for it, runs, and stops it."""
import json
import sys

import pandas as pd
import pytest

from snakemake_runner import ROOT, make_run_dir, say, snakemake

pytestmark = pytest.mark.workflow


def test_entities_rule_runs_against_a_managed_server(tmp_path, pytestconfig):
    command = f"{sys.executable} {ROOT / 'tests/data/fake_openai_server.py'} serve"
    run = make_run_dir(tmp_path, {
        "shards": 1,
        "models": {"text_llm": {"path": "meta-llama/Llama-2-7b-chat-hf"}},
        "generation": {"text": {"backend": "openai", "api_key_env": "GROUNDFLOW_WORKFLOW_TEST_KEY",
                                "max_retries": 0,
                                "serve": {"command": command, "args": ["--responder", "entities"], "poll_s": 0.1}}},
        "cvc": {"fixture": {"n_images": 6, "include_bad": False}},
    })
    snakemake(run, "--cores", "2", "results/cvc/entities/0.parquet")
    counts = json.loads((run / "results/cvc/entities/0.counts.json").read_text())
    kept = pd.read_parquet(run / "results/cvc/entities/0.parquet")
    assert counts["in"] == counts["out"] + counts["rejected"] and counts["out"] > 0 and len(kept)
    assert counts["produced_by"]["decoding"] == "free_filtered"
    assert counts["produced_by"]["generator"]["backend"] == "openai"
    assert "unicorn" not in set(kept["label"])
    server_log = (run / "logs/cvc/entities/0.server.log").read_text()
    assert "serve meta-llama/Llama-2-7b-chat-hf --host 127.0.0.1" in server_log
    assert "stopped on SIGTERM" in server_log
    assert "free_filtered" in (run / "logs/cvc/entities/0.log").read_text()
    assert not (run / "resources/models/tiny-llama").exists()  # the server's business, not ours
    say(pytestconfig, f"vLLM-served entity rule (managed fake server): in {counts['in']} / "
                      f"out {counts['out']} / rejected {counts['rejected']}")
