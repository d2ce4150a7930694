"""The CVC text stages through the OpenAI-compatible backend, on the demo fixture's captions.

The fake server (tests/data/fake_openai_server.py, 127.0.0.1 only) answers entity prompts as a
careless model would: lines of the caption's words, some of them not entities (function words),
plus an entity the caption never mentions. Without guided decoding the stage must filter those
out; with it, the server must only write what the regular expression allows.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from groundflow.cvc.entities import (
    CONSTRAINED,
    FREE_FILTERED,
    entity_candidates,
    entity_decoding,
    extract_entities,
)
from groundflow.cvc.fixture import make_fixture
from groundflow.cvc.ingest import check_images, ingest_captions
from groundflow.cvc.instructions import GUIDED_CHOICE, build_question, generate_instructions, is_plural
from groundflow.generate.backends import UnsupportedFeatureError, open_generator
from groundflow.io.artifacts import read_table, write_table
from groundflow.pipeline import StageJob

DATA = Path(__file__).resolve().parents[1] / "data"
FAKE_SERVER = DATA / "fake_openai_server.py"
KEY_ENV = "GROUNDFLOW_TEST_ENTITIES_KEY"
KEY = "sk-entities-test"
MAX_ENTITIES, MAX_SPAN_WORDS = 4, 3  # config.yaml's cvc.entities


def _load_fake_server():
    spec = importlib.util.spec_from_file_location("fake_openai_server", FAKE_SERVER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_openai_server"] = module
    spec.loader.exec_module(module)
    return module


fake = _load_fake_server()


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    """The demo's caption records after ingest and the image check (bad inputs rejected there)."""
    root = tmp_path_factory.mktemp("fixture")
    make_fixture(root, seed=0, n_images=24, include_bad=True)
    ingested, _ = ingest_captions(root / "captions.jsonl", root / "images")
    records = check_images(ingested.kept, root / "images").kept
    assert len(records) > 50
    return records


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY_ENV


def endpoint(server, **extra):
    return {"backend": "openai", "base_url": server.base_url, "served_model": "llama-2-7b-chat",
            "api_key_env": KEY_ENV, "max_concurrency": 8, "timeout_s": 60, "max_retries": 0, **extra}


def check_entities(kept: pd.DataFrame, captions: pd.DataFrame) -> None:
    text_of = dict(zip(captions["id"], captions["caption"]))
    for row in kept.itertuples():
        for caption_id, full in zip(row.caption_ids, row.full_forms):
            assert (full, row.label) in entity_candidates(text_of[caption_id], MAX_SPAN_WORDS)
    assert fake.INVENTED_ENTITY not in set(kept["label"])


def test_managed_server_entity_stage_on_the_demo_captions(tmp_path, captions, monkeypatch, capsys):
    """The whole stage as its script runs it: a managed "vllm serve" (the fake, started from its
    command line), StageJob's chunks, accounting, atomic outputs and counts."""
    monkeypatch.delenv(KEY_ENV, raising=False)  # the managed server gets a fresh key
    records_path = tmp_path / "images.parquet"
    write_table(captions, records_path)
    out = {name: str(tmp_path / f"entities.{name}") for name in ("parquet", "rejects.parquet", "counts.json")}
    job = StageJob("entities", records=str(records_path), kept=out["parquet"], rejects=out["rejects.parquet"],
                   counts=out["counts.json"], progress_dir=str(tmp_path / "progress"), log_file=str(tmp_path / "job.log"))
    spec = {"backend": "openai", "model": {"path": "meta-llama/Llama-2-7b-chat-hf"}, "api_key_env": KEY_ENV,
            "max_retries": 0, "timeout_s": 60,
            "serve": {"command": f"{sys.executable} {FAKE_SERVER} serve", "args": ["--responder", "entities"],
                      "poll_s": 0.05}}
    with open_generator(spec, kind="text", server_log=str(tmp_path / "job.server.log")) as generator:
        decoding = entity_decoding(generator)
        summary = job.run(
            lambda records: extract_entities(records, generator, max_entities=MAX_ENTITIES,
                                             max_span_words=MAX_SPAN_WORDS),
            produced_by={"generator": generator.describe(), "decoding": decoding},
            chunk_size=16, parent_column="caption_ids", group_column="image_id",
        )
    assert decoding == FREE_FILTERED
    counts = json.loads(Path(out["counts.json"]).read_text())
    assert counts["in"] == len(captions) == counts["out"] + counts["rejected"]
    assert counts["chunks"] > 1 and counts["produced_by"]["decoding"] == FREE_FILTERED
    kept, rejects = read_table(out["parquet"]), read_table(out["rejects.parquet"])
    assert len(kept) > 0 and counts["rejected"] > 0  # filtered lines leave some captions empty
    check_entities(kept, captions)
    assert all(reason.startswith("no entity extracted from caption ") for reason in rejects["reason"])
    assert "stopped on SIGTERM" in (tmp_path / "job.server.log").read_text()
    with capsys.disabled():
        print(f"\nvLLM-served entity stage on the fake server (demo captions, free_filtered): "
              f"in {counts['in']} / out {counts['out']} / rejected {counts['rejected']} "
              f"({len(kept)} entity rows, {summary['chunks']} chunks)")


def test_guided_decoding_gives_what_free_generation_filtered(captions, key_env):
    """The fake writes the same lines either way: the regex must drop exactly what the filter drops."""
    with fake.FakeOpenAIServer(fake.FakeServerBehaviour(api_key=KEY, responder="entities")) as server:
        with open_generator(endpoint(server), kind="text") as free:
            filtered = extract_entities(captions, free, max_entities=MAX_ENTITIES, max_span_words=MAX_SPAN_WORDS)
        free_answers = list(server.state.payloads)
        with open_generator(endpoint(server, guided_decoding="structured_outputs"), kind="text") as guided:
            assert entity_decoding(guided) == CONSTRAINED
            constrained = extract_entities(captions, guided, max_entities=MAX_ENTITIES, max_span_words=MAX_SPAN_WORDS)
        guided_payloads = server.state.payloads[len(free_answers):]
    assert all("structured_outputs" not in p for p in free_answers)
    assert guided_payloads and all("regex" in p["structured_outputs"] for p in guided_payloads)
    pd.testing.assert_frame_equal(constrained.kept, filtered.kept)
    pd.testing.assert_frame_equal(constrained.rejects, filtered.rejects)
    check_entities(constrained.kept, captions)


INSTANCES = pd.DataFrame({
    "id": ["a-circle", "b-squares"],
    "label": ["circle", "squares"],
    "caption": ["A red circle above a blue square.", "Two green squares next to a star."],
})
TYPES = ["object", "animal", "shape"]


def test_instructions_refuse_an_endpoint_that_cannot_score_nor_guide(key_env):
    with fake.FakeOpenAIServer(fake.FakeServerBehaviour(api_key=KEY)) as server:
        with open_generator(endpoint(server), kind="text") as generator:
            with pytest.raises(UnsupportedFeatureError) as raised:
                generate_instructions(INSTANCES, generator, object_types=TYPES)
        assert server.state.requests == 0
    message = str(raised.value)
    assert message.startswith("instructions: ")
    assert "'openai' generator" in message and server.base_url in message
    assert "generation.text.guided_decoding" in message and "generation.text.backend: hf" in message


def test_instructions_choose_types_by_guided_choice(key_env):
    with fake.FakeOpenAIServer(fake.FakeServerBehaviour(api_key=KEY)) as server:
        with open_generator(endpoint(server, guided_decoding="guided"), kind="text") as generator:
            result = generate_instructions(INSTANCES, generator, object_types=TYPES)
        payloads = server.state.payloads
    assert [p["guided_choice"] for p in payloads] == [[" object", " animal", " shape"]] * 2
    assert len(result.kept) + len(result.rejects) == 2
    for row in result.kept.itertuples():
        assert row.object_type in TYPES
        assert row.instruction == build_question(row.object_type, is_plural(row.label))
    assert GUIDED_CHOICE == "guided_choice"
