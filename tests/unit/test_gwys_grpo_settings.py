"""GWYS's GRPO settings (groundflow.gwys.grpo_settings): the spec's values by default, every one of
them written into TRL's GRPOConfig (TRL 1.16's own defaults differ in loss_type, beta, top_p, top_k
and bf16, spec §11.1), unknown keys and bad values refused, no torch import."""

import dataclasses
import subprocess
import sys

import pytest
from trl import GRPOConfig

from groundflow.gwys.conflict import ConflictSettings
from groundflow.gwys.grpo_settings import (DEFAULT_REWARD_WEIGHTS, GRPOSettings, check_reward_names,
                                           grpo_config_kwargs)

SPEC = {"num_generations": 8, "temperature": 1.0, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.0,
        "max_completion_length": 768, "beta": 0.04, "loss_type": "grpo", "learning_rate": 1e-6,
        "lr_scheduler_type": "cosine", "weight_decay": 0.01, "max_grad_norm": 5.0, "num_train_epochs": 1.0,
        "num_iterations": 1, "scale_rewards": "group", "use_vllm": False, "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1, "steps_per_generation": 1, "save_steps": 100, "logging_steps": 1}


def config_of(settings: GRPOSettings, rewards=("accuracy", "format", "caption")) -> GRPOConfig:
    fields = GRPOConfig.__dataclass_fields__
    names = (("activation_checkpointing", "activation_checkpointing_kwargs") if "activation_checkpointing" in fields
             else ("gradient_checkpointing", "gradient_checkpointing_kwargs"))
    return GRPOConfig(**grpo_config_kwargs(settings, output_dir="/tmp/unused", use_cpu=True, use_bf16=False,
                                           reward_weights=settings.weights_for(list(rewards)),
                                           checkpointing_names=names))


def test_the_defaults_are_the_spec_values_and_reach_trls_config():
    config = config_of(GRPOSettings())
    assert {k: getattr(config, k) for k in SPEC} == SPEC
    assert config.reward_weights == [1.0, 0.1, 1.0]
    assert config.bf16 is False and config.use_cpu is True
    assert config.warmup_steps == 0 and config.mask_truncated_completions is False


def test_where_trls_defaults_differ_from_the_original_ours_win():
    """A setting left to TRL would be its default; these are the ones that differ from the spec."""
    trl_default = GRPOConfig(output_dir="/tmp/unused", use_cpu=True)
    ours = config_of(GRPOSettings())
    for name in ("loss_type", "beta", "top_p", "top_k"):
        assert getattr(trl_default, name) != getattr(ours, name) == SPEC[name], name
    assert trl_default.bf16 is True and ours.bf16 is False


def test_settings_pass_through_as_configured():
    settings = GRPOSettings.from_dict({"num_generations": 4, "per_device_prompts": 2, "gradient_accumulation_steps": 2,
                                       "temperature": 0.7, "top_k": 0, "max_grad_norm": None, "beta": 0.0,
                                       "reward_weights": {"format": 0.5}})
    config = config_of(settings, rewards=("accuracy", "format"))
    assert config.per_device_train_batch_size == 8 and config.steps_per_generation == 2
    assert (config.temperature, config.top_k, config.max_grad_norm, config.beta) == (0.7, 0, 0.0, 0.0)
    assert config.reward_weights == [1.0, 0.5]


def test_sampling_overrides_pin_every_sampling_field():
    overrides = GRPOSettings(top_k=20).sampling_overrides()
    assert overrides == {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 20, "min_p": None,
                         "typical_p": 1.0, "repetition_penalty": 1.0}


@pytest.mark.parametrize("values, message", [
    ({"num_generation": 8}, r"unknown GRPO settings \['num_generation'\]"),
    ({"num_generations": 1}, "num_generations must be an integer >= 2"),
    ({"temperature": 0}, "temperature must be > 0"),
    ({"top_p": 0}, "top_p must be in"),
    ({"loss_type": "ppo"}, "loss_type must be one of"),
    ({"bf16": "yes"}, "bf16 must be"),
    ({"lora": {"rank": 8}}, r"unknown LoRA settings \['rank'\]"),
    ({"lora": {"r": 8}, "freeze_vision": True}, "freeze_vision is for full fine-tuning"),
    ({"reward_weights": {"length": 1.0}}, r"reward_weights for unknown rewards \['length'\]"),
    ({"answer_rules": "loose"}, "answer rules are one of"),
    ({"conflict": {"enabled": True, "lambda": 0.1}}, r"unknown conflict settings \['lambda'\]"),
    ({"conflict": {"enabled": True, "fallback": "random"}}, "fallback is one of"),
    ({"conflict": {"enabled": True, "tau": 0}}, "tau must be > 0"),
    ({"min_pixels": 10_000, "max_pixels": 3136}, "min_pixels 10000 exceeds max_pixels 3136"),
    ({"max_steps": -1, "num_train_epochs": 0}, "num_train_epochs > 0 or max_steps > 0"),
])
def test_bad_settings_are_refused_naming_the_setting(values, message):
    with pytest.raises(ValueError, match=message):
        GRPOSettings.from_dict(values)


def test_conflict_settings_are_gwys_conflicts():
    settings = GRPOSettings.from_dict({"conflict": {"enabled": True, "weight": 0.02, "partners": 3, "seed": 5}})
    assert settings.conflict_enabled
    assert settings.conflict_settings == ConflictSettings(weight=0.02, threshold=0.5, tau=0.5, partners=3, seed=5)
    assert not GRPOSettings().conflict_enabled


def test_reward_weights_follow_the_runs_rewards():
    assert GRPOSettings().weights_for(["accuracy", "format"]) == [1.0, 0.1]  # the baseline's
    assert GRPOSettings().weights_for(["caption", "accuracy"]) == [DEFAULT_REWARD_WEIGHTS["caption"], 1.0]
    with pytest.raises(ValueError, match="rewards this run does not use"):
        GRPOSettings(reward_weights={"caption": 2.0}).weights_for(["accuracy"])
    with pytest.raises(ValueError, match="unknown rewards"):
        check_reward_names(["accuracy", "length"])
    with pytest.raises(ValueError, match="named twice"):
        check_reward_names(["format", "format"])
    with pytest.raises(ValueError, match="at least one reward"):
        check_reward_names([])


def test_every_setting_has_a_default_and_round_trips():
    settings = GRPOSettings.from_dict({"lora": {"r": 64, "alpha": 128}, "conflict": {"enabled": True}})
    assert GRPOSettings.from_dict(dataclasses.asdict(settings)) == settings


def test_the_settings_module_imports_no_torch():
    code = "import sys, groundflow.gwys.grpo_settings; print('torch' in sys.modules, 'trl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
