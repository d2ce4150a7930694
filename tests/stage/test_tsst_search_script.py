"""workflow/scripts/tsst_search.py as Snakemake runs it: questions -> search table, rejects and counts.

Tiny random LLaVAs as policy and value model (the value folder is a plain LLaVA, so it gets a fresh
head), a question table with images, a text-only question, a missing and a corrupt image. The policy is
saved "sentence-prone" (tests/reference/tsst_search.sentence_prone_checkpoint) so that chains grow and finish.
"""
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from groundflow.io.artifacts import read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.models.llava import build_tiny_llava
from reference.tsst_search import sentence_prone_checkpoint
from script_harness import FakeSnakemake, run_script

SEARCH = {"branch": 2, "n_consistency": 2, "num_beams": 1, "max_step_tokens": 6, "max_rounds": 3}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tsst-search-script")
    texts = ["Step 1: the cat is red. Final Answer: A. red"]
    policy = build_tiny_llava(root / "policy", seed=0, texts=texts)
    sentence_prone_checkpoint(policy)
    value = build_tiny_llava(root / "value", seed=1, texts=texts)
    images = root / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(images / "red.png")
    Image.new("RGB", (40, 64), (20, 30, 220)).save(images / "blue.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    rows = [("q-red", "red.png"), ("q-text", None), ("q-missing", "nowhere.png"), ("q-blue", "blue.png"),
            ("q-broken", "broken.png")]
    questions = pd.DataFrame({
        "id": [r[0] for r in rows], "source": "fixture",
        "question": [f"What colour is shown in {r[0]}?" for r in rows],
        "choices": [["red", "blue"]] * len(rows), "answer_label": 1, "answer": "red", "image": [r[1] for r in rows]})
    write_table(questions, root / "questions.parquet", schema=table_schema("tsst_questions"))
    return root, policy, value, images


def _run(root: Path, policy: Path, value: Path, images: Path, name: str, chunk_size: int) -> dict:
    out = {"kept": str(root / name / "search.parquet"), "rejects": str(root / name / "search.rejects.parquet"),
           "counts": str(root / name / "search.counts.json")}
    run_script("tsst_search.py", FakeSnakemake(
        input={"records": str(root / "questions.parquet"), "policy": str(policy), "value": str(value)},
        output=out,
        params={"image_root": str(images), "search": SEARCH, "seed": 5, "chunk_size": chunk_size, "progress_dir": str(root / ".progress" / name),
                "models": {"policy": {"device": "cpu"}, "value": {"device": "cpu"}}, "prompts": None,
                "batch_rows": 8, "value_batch_size": 4, "pad_square": True},
        log=[str(root / "logs" / f"{name}.log")]))
    return out


def test_search_script_writes_one_row_per_readable_question_and_rejects_the_rest(setup):
    root, policy, value, images = setup
    out = _run(root, policy, value, images, "chunks-of-2", chunk_size=2)
    kept = read_table(out["kept"])
    assert sorted(kept["id"]) == ["q-blue", "q-red", "q-text"]
    assert pq.read_schema(out["kept"]).remove_metadata() == table_schema("tsst_search")
    rejects = read_table(out["rejects"]).set_index("id")["reason"]
    assert sorted(rejects.index) == ["q-broken", "q-missing"]
    assert "nowhere.png" in rejects["q-missing"] and "broken.png" in rejects["q-broken"]
    counts = json.loads(Path(out["counts"]).read_text())
    assert (counts["in"], counts["out"], counts["rejected"]) == (5, 3, 2)
    assert counts["produced_by"]["search"]["G"] == 2 and counts["produced_by"]["seed"] == 5
    for _, row in kept.iterrows():
        assert 1 <= row["rounds"] <= SEARCH["max_rounds"] and row["policy_calls"] >= row["rounds"]
        scores = [c["score"] for c in row["chains"]]
        assert scores == sorted(scores, reverse=True)
    log_text = (root / "logs" / "chunks-of-2.log").read_text()
    assert "policy continues the open assistant turn" in log_text and "[fix]" in log_text
    # per-question seeds: other chunks (other batches) give the same rows
    assert sum(len(chains) for chains in kept["chains"]) >= 2
    other = read_table(_run(root, policy, value, images, "chunks-of-5", chunk_size=5)["kept"])
    assert _rows(other) == _rows(kept)
    scores = [c["score"] for chains in kept.sort_values("id")["chains"] for c in chains]
    assert [c["score"] for chains in other.sort_values("id")["chains"] for c in chains] == pytest.approx(scores, abs=1e-6)


def _rows(frame: pd.DataFrame) -> list:
    """Rows without the values, which padded batches of other sizes change in the last float bits."""
    return sorted((r["id"], [(c["text"], c["end"]) for c in r["chains"]], r["rounds"], r["restarts"], r["policy_calls"],
                   r["value_calls"]) for r in frame.to_dict("records"))


def test_a_job_whose_questions_are_all_rejected_writes_an_empty_table_in_the_declared_schema(setup):
    root, policy, value, images = setup
    questions = read_table(root / "questions.parquet")
    write_table(questions[questions["id"].isin(["q-missing", "q-broken"])], root / "questions.parquet",
                schema=table_schema("tsst_questions"))
    try:
        out = _run(root, policy, value, images, "all-rejected", chunk_size=1)
    finally:
        write_table(questions, root / "questions.parquet", schema=table_schema("tsst_questions"))
    assert len(read_table(out["kept"])) == 0
    assert pq.read_schema(out["kept"]).remove_metadata() == table_schema("tsst_search")
    assert sorted(read_table(out["rejects"])["id"]) == ["q-broken", "q-missing"]
