"""The entity stage as its script runs it (workflow/scripts/cvc_entities.py), against a managed
fake `vllm serve` that writes free lines (tests/data/fake_openai_server.py, responder "entities"):
the prompt file the config names is the one loaded and versioned, a malformed one fails the job
before any server starts, and `max_entities: null` caps nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from groundflow.cvc.entities import load_entity_prompt
from groundflow.cvc.fixture import make_fixture
from groundflow.cvc.ingest import check_images, ingest_captions
from groundflow.io import read_table, write_table
from managed_fake_server import managed_spec
from script_harness import FakeSnakemake, run_script, stage_outputs

KEY_ENV = "GROUNDFLOW_TEST_ENTITY_SCRIPT_KEY"


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)  # the managed server gets a fresh key


@pytest.fixture(scope="module")
def records_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixture")
    make_fixture(root, seed=0, n_images=6, include_bad=False)
    ingested, _ = ingest_captions(root / "captions.jsonl", root / "images")
    path = root / "images.parquet"
    write_table(check_images(ingested.kept, root / "images").kept, path)
    return path


def run_stage(tmp_path: Path, records_path: Path, *, prompt: str | None, max_entities: int | None) -> dict:
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    opts = {"batch_size": 4, "max_entities": max_entities, "max_span_words": 3, "max_new_tokens": None,
            "prompt": prompt, "chunk_size": 8}
    smk = FakeSnakemake(
        input={"records": str(records_path)}, output=stage_outputs(out, "entities"),
        params={"generation": managed_spec(KEY_ENV, "--responder", "entities"), "opts": opts,
                "progress_dir": str(out / ".progress")},
        log=[str(out / "logs" / "0.log")],
    )
    run_script("cvc_entities.py", smk)
    counts = json.loads(Path(smk.output.counts).read_text())
    return {"counts": counts, "kept": read_table(smk.output.kept), "log_dir": out / "logs"}


def per_caption(kept) -> int:
    return int(kept.explode("caption_ids").groupby("caption_ids").size().max())


def test_prompt_file_is_versioned_and_a_swap_changes_the_version(tmp_path, records_path):
    ours = run_stage(tmp_path / "ours", records_path, prompt=None, max_entities=None)
    assert ours["counts"]["produced_by"]["prompt"] == load_entity_prompt().version
    assert ours["counts"]["produced_by"]["prompt"].startswith("entities-")
    assert ours["counts"]["produced_by"]["decoding"] == "free_filtered"
    assert len(ours["kept"]) > 0

    mine = tmp_path / "my_entities.txt"
    mine.write_text('Name the things.\nCaption: "{caption}"\n', encoding="utf-8")
    swapped = run_stage(tmp_path / "mine", records_path, prompt=str(mine), max_entities=None)
    version = swapped["counts"]["produced_by"]["prompt"]
    assert version == load_entity_prompt(str(mine)).version != ours["counts"]["produced_by"]["prompt"]
    assert version.startswith("my_entities-")
    # the fake answers from the caption alone: the same entities, whichever prompt asked
    assert sorted(swapped["kept"]["id"]) == sorted(ours["kept"]["id"])

    # max_entities null caps nothing: the fake's free answers give captions several entities;
    # a cap of 1 keeps one per caption
    assert per_caption(ours["kept"]) > 1
    capped = run_stage(tmp_path / "capped", records_path, prompt=None, max_entities=1)
    assert per_caption(capped["kept"]) == 1


def test_a_prompt_file_without_caption_fails_before_the_server_starts(tmp_path, records_path):
    bad = tmp_path / "bad_entities.txt"
    bad.write_text("List the entities.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_entities\.txt lacks the field\(s\) \{caption\}"):
        run_stage(tmp_path, records_path, prompt=str(bad), max_entities=None)
    assert not (tmp_path / "out" / "logs" / "0.server.log").exists()
