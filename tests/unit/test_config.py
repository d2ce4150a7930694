import copy
from pathlib import Path

import pytest
import yaml

from groundflow.config import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[2]


def load(name):
    return yaml.safe_load((ROOT / name).read_text())


def test_default_config_is_valid_and_gets_defaults():
    config = validate_config(load("config.yaml"))
    assert config["cvc"]["grounding"]["backend"] == "grounding_dino"
    assert config["cvc"]["occlusion"]["fill"] == [123, 116, 103]
    assert config["models"]["sam"]["dtype"] == "auto"


def test_paper_preset_merged_over_default_is_valid():
    config = load("config.yaml")
    preset = load("configs/cvc-paper.yaml")
    for key, value in preset.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    validate_config(config)
    assert config["cvc"]["causality"]["ppl_high"] == 3.33
    # the seed's GLIP 0.6 is GLIP's key; Grounding DINO, the preset's backend, has its own demo's 0.35
    assert config["cvc"]["grounding"]["glip_threshold"] == 0.6
    assert config["cvc"]["grounding"]["dino_box_threshold"] == 0.35


def test_unknown_key_is_named_with_its_path():
    config = load("config.yaml")
    config["cvc"]["grounding"]["box_treshold"] = 0.3
    with pytest.raises(ConfigError, match=r"unknown key 'cvc\.grounding\.box_treshold'"):
        validate_config(config)


def test_wrong_type_is_named_with_its_path():
    config = load("config.yaml")
    config["shards"] = "four"
    with pytest.raises(ConfigError, match=r"'shards': 'four' is not of type 'integer'"):
        validate_config(config)


def test_defaults_are_not_shared_between_configs():
    a = validate_config({k: copy.deepcopy(v) for k, v in load("config.yaml").items() if k != "resources"})
    b = validate_config({k: copy.deepcopy(v) for k, v in load("config.yaml").items() if k != "resources"})
    a["resources"]["cpu_job"]["mem_mb"] = 1
    assert b["resources"]["cpu_job"]["mem_mb"] != 1


@pytest.mark.parametrize("preset, absent", [("cvc-paper", "cings"), ("cings-paper", "cvc"), ("tsst-paper", "cings"),
                                             ("gwys-paper", "tsst")])
def test_each_paper_preset_is_a_whole_config_without_the_other_methods_keys(preset, absent):
    config = validate_config(load(f"configs/{preset}.yaml"))
    assert absent not in config


@pytest.mark.parametrize("method, section, model", [("cvc", "cvc", "sam"), ("cings", "cings", "cings_lm"),
                                                    ("tsst", "tsst", "tsst_policy"), ("gwys", "gwys", "gwys_policy")])
def test_a_listed_method_needs_its_section_and_models(method, section, model):
    config = load("config.yaml")
    config["methods"] = [method]
    without_section = {k: v for k, v in copy.deepcopy(config).items() if k != section}
    with pytest.raises(ConfigError, match=rf"'{section}' is a required property, because `methods`"):
        validate_config(without_section)
    without_model = copy.deepcopy(config)
    del without_model["models"][model]
    with pytest.raises(ConfigError, match=rf"'models': '{model}' is a required property"):
        validate_config(without_model)
    for other in {"cvc", "cings", "tsst", "gwys"} - {method}:
        config.pop(other)  # the other methods' sections are not needed
    validate_config(config)


@pytest.mark.parametrize("method", ["cvcc", "GWYS"])
def test_methods_lists_only_methods_whose_rules_exist(method):
    config = load("config.yaml")
    config["methods"] = ["cvc", method]
    with pytest.raises(ConfigError, match=rf"'methods\.1': '{method}' is not one of \['cvc', 'cings', 'tsst', 'gwys'\]"):
        validate_config(config)
