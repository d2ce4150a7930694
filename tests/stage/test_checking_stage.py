"""Answer checking as its job runs it (the real MiniLM): in chunks, resumed after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import groundflow.cvc.trials as trials_module
from groundflow.embed import PACKAGED_MINILM
from groundflow.io import read_table, write_table
from script_harness import FakeSnakemake, run_script, stage_outputs

PREDICTIONS = {
    "img-1-dog": ("dog", ["a dog", "puppy", ""]), "img-1-ball": ("ball", ["ball", "a red ball", "cat"]),
    "img-2-cat": ("cat", ["kitten", "dog", "cat"]), "img-3-car": ("car", ["", "", ""]),
    "img-4-tree": ("tree", ["tree", "oak tree", "leaf"]),
}


def checking_job(folder: Path) -> FakeSnakemake:
    folder.mkdir(parents=True, exist_ok=True)
    write_table(pd.DataFrame({"id": list(PREDICTIONS), "label": [v[0] for v in PREDICTIONS.values()],
                              "predictions": [v[1] for v in PREDICTIONS.values()]}), folder / "extracted.parquet")
    return FakeSnakemake(
        input={"records": str(folder / "extracted.parquet")}, output=stage_outputs(folder, "checking"),
        params={"models": {"embedder": {"path": PACKAGED_MINILM, "device": "cpu"}},
                "opts": {"threshold": 0.6, "batch_size": 4, "chunk_size": 2},
                "progress_dir": str(folder / ".progress" / "checking" / "0")},
        log=[str(folder / "logs" / "0.log")],
    )


def test_checking_resumes_its_finished_chunks(tmp_path, monkeypatch):
    reference = checking_job(tmp_path / "ref")
    run_script("cvc_checking.py", reference)
    expected = {key: Path(reference.output[key]).read_bytes() for key in ("kept", "rejects")}
    checked = read_table(reference.output.kept)
    assert list(checked["id"]) == list(PREDICTIONS)
    assert checked["n_correct"].sum() > 0 and checked.set_index("id").loc["img-3-car", "n_correct"] == 0
    counts = json.loads(Path(reference.output.counts).read_text())
    assert (counts["chunks"], counts["chunks_reused"]) == (3, 0)

    smk = checking_job(tmp_path / "killed")
    calls = []
    original = trials_module.check_answers

    def killed_in_chunk_3(records, embedder, **kwargs):
        calls.append(list(records["id"]))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return original(records, embedder, **kwargs)

    monkeypatch.setattr(trials_module, "check_answers", killed_in_chunk_3)
    with pytest.raises(RuntimeError, match="killed"):
        run_script("cvc_checking.py", smk)
    monkeypatch.undo()
    assert not Path(smk.output.kept).exists()
    run_script("cvc_checking.py", smk)
    assert "resumed 2 finished chunks (4 items), computing 1 chunks (1 items)" in Path(smk.log[0]).read_text()
    counts = json.loads(Path(smk.output.counts).read_text())
    assert (counts["chunks"], counts["chunks_reused"], counts["items_recomputed"]) == (3, 2, 1)
    assert {key: Path(smk.output[key]).read_bytes() for key in ("kept", "rejects")} == expected
    assert not Path(smk.params.progress_dir).exists()
