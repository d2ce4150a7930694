"""The SFT loss settings for paper scale and compat runs (loss_chunk_tokens, max_grad_norm,
loss_averaging): SFTConfig and the config schema accept and refuse the same values, and agree on
the defaults."""

from pathlib import Path

import pytest
import yaml

from groundflow.config import ConfigError, load_schema, validate_config
from groundflow.train.config import ACCUMULATED_TOKENS, LOSS_AVERAGING, SFTConfig

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("loss_chunk_tokens", "max_grad_norm", "loss_averaging")


def with_cings_train(**settings) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["cings"]["train"].update(settings)
    return config


def test_defaults_are_the_old_behaviour_in_both():
    config = SFTConfig()
    assert (config.loss_chunk_tokens, config.max_grad_norm, config.loss_averaging) == (None, 1.0, ACCUMULATED_TOKENS)
    sft = load_schema()["$defs"]["sft"]["properties"]
    assert {key: sft[key]["default"] for key in KEYS} == {key: getattr(config, key) for key in KEYS}
    assert sft["loss_averaging"]["enum"] == list(LOSS_AVERAGING)


@pytest.mark.parametrize("settings", [
    {"loss_chunk_tokens": 1}, {"loss_chunk_tokens": 4096}, {"loss_chunk_tokens": None},
    {"max_grad_norm": None}, {"max_grad_norm": 0.3}, {"loss_averaging": "micro_batch"},
    {"max_grad_norm": None, "loss_averaging": "micro_batch", "loss_chunk_tokens": 8},
])
def test_accepted_by_both(settings):
    validated = validate_config(with_cings_train(**settings))
    SFTConfig.from_dict({k: v for k, v in validated["cings"]["train"].items() if k != "accelerate_config"})


@pytest.mark.parametrize("settings, message", [
    ({"loss_chunk_tokens": 0}, "loss_chunk_tokens"),
    ({"loss_chunk_tokens": 2.5}, "loss_chunk_tokens"),
    ({"loss_chunk_tokens": True}, "loss_chunk_tokens"),
    ({"max_grad_norm": 0}, "max_grad_norm"),
    ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ({"loss_averaging": "mean"}, "loss_averaging"),
])
def test_refused_by_both(settings, message):
    with pytest.raises(ValueError, match=message):
        SFTConfig.from_dict(settings)
    with pytest.raises(ConfigError, match=message):
        validate_config(with_cings_train(**settings))


def test_the_paper_preset_chunks_every_cings_training_loss_and_keeps_the_defaults_for_compat():
    preset = yaml.safe_load((ROOT / "configs" / "cings-paper.yaml").read_text())
    cings = preset["cings"]
    for train in (cings["train"], cings["vl"]["stage1"], cings["vl"]["stage2"]):
        assert train["loss_chunk_tokens"] == 4096
    # compat is opt-in (a comment in the preset says how)
    assert "max_grad_norm" not in cings["train"] and "loss_averaging" not in cings["train"]
    text = (ROOT / "configs" / "cings-paper.yaml").read_text()
    assert "max_grad_norm: null" in text and "loss_averaging: micro_batch" in text
