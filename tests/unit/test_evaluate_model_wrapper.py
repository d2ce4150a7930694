"""Which lmms-eval wrapper a checkpoint runs through: a local folder's config.json, or a hub id's
from the local Hugging Face cache (a paper preset's llava-hf/llava-1.5-7b-hf), never a download."""

import json

import huggingface_hub.constants
import pytest

from groundflow.evaluate.harness import model_wrapper


def cached_model(cache, repo_id: str, config: dict) -> None:
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abc")
    snapshot = folder / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))


def test_a_local_folder_and_a_cached_hub_id_name_their_wrapper(tmp_path, monkeypatch):
    local = tmp_path / "qwen"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert model_wrapper(local) == "qwen2_5_vl"

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cached_model(tmp_path / "hub", "llava-hf/llava-1.5-7b-hf", {"model_type": "llava"})
    assert model_wrapper("llava-hf/llava-1.5-7b-hf") == "llava_hf"


def test_a_hub_id_not_in_the_cache_and_an_unknown_family_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="nor a hub id in the local Hugging Face cache"):
        model_wrapper("llava-hf/llava-1.5-13b-hf")
    cached_model(tmp_path / "hub", "org/text-only", {"model_type": "llama"})
    with pytest.raises(ValueError, match="model_type 'llama' has no lmms-eval wrapper"):
        model_wrapper("org/text-only")
