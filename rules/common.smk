# Helpers shared by every rule file: config validation, paths, model inputs, resources.
import os
from pathlib import Path

from groundflow.config import validate_config
from groundflow.models.spec import offline_hub

offline_hub()
validate_config(config)

RESULTS = config["results_dir"]
SHARDS = list(range(config["shards"]))
wildcard_constraints:
    shard=r"\d+",


def results(*parts):
    return str(Path(RESULTS, *parts))


def model_input(name):
    """The tiny model's folder when it is built here (so Snakemake builds it first); nothing for
    a hub id or a checkpoint the user supplies."""
    path = config["models"][name]["path"]
    return path if path.startswith(config["models_dir"].rstrip("/") + "/tiny-") else []


def model_params(*names):
    return {name: config["models"][name] for name in names}


def generation_spec(kind, model_name):
    """How a stage generates: backend settings from `generation.<kind>`, model from `models`."""
    return {**config["generation"][kind], "model": config["models"][model_name]}


def job_resources(kind):
    spec = config["resources"][kind]
    return {"mem_mb": spec["mem_mb"], "runtime": spec["runtime"], "gpu": spec["gpu"]}


def job_threads(kind):
    return config["resources"][kind]["threads"]


def tiny_model_targets():
    """Every tiny model the config names, so the demo builds (and checks) all of them."""
    return sorted({p for name in config["models"] for p in [model_input(name)] if p})


def all_targets():
    targets = tiny_model_targets()
    if "cvc" in config["methods"]:
        targets += cvc_targets() + cvc_training_targets()
    return targets
