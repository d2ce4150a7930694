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


def tiny_model_input(path):
    """`path` when it is a tiny model built here (so Snakemake builds it first); nothing for a hub
    id or a checkpoint the user supplies."""
    return path if path.startswith(config["models_dir"].rstrip("/") + "/tiny-") else []


def model_input(name):
    return tiny_model_input(config["models"][name]["path"])


def user_file_or_fixture(path, fixture):
    """The input file of a method: `path` when it is the bundled fixture (a rule makes it) or
    exists; otherwise nothing, so that a preset can be planned (`-n`) before its data are
    downloaded, and the job that reads it names the missing file at run time."""
    return path if path == fixture or os.path.exists(path) else []


def model_params(*names):
    return {name: config["models"][name] for name in names}


def train_params(train):
    """A train section for `train.launch.run_sft`: its accelerate/DeepSpeed files are looked up in
    the run folder, then in this workflow (a run made with `groundflow init` and `--directory`
    finds configs/accelerate there); a missing one fails the plan, not the job. The checkout's path
    is added by the job's script (pipeline.train_settings), not here: as a param it would make
    moving the checkout re-run training."""
    from groundflow.train.launch import check_launch_settings

    return check_launch_settings(train, run_dir=os.getcwd(), workflow_dir=workflow.basedir)


def generation_spec(kind, model_name):
    """How a stage generates: backend settings from `generation.<kind>`, model from `models`."""
    return {**config["generation"][kind], "model": config["models"][model_name]}


def generation_model_input(kind, model_name):
    """The model a generating stage needs here: a local one, or one its managed server loads;
    an endpoint someone else runs needs no local copy."""
    generation = config["generation"][kind]
    return model_input(model_name) if generation["backend"] == "hf" or generation["serve"] else []


def job_resources(kind):
    """What a job of `kind` asks for, plus where SLURM should run it: snakemake-executor-plugin-slurm
    reads `slurm_partition`, `gres` and `gpu_model` (and turns `gpu` into `--gpus=[model:]N`);
    local runs ignore them."""
    spec = config["resources"][kind]
    resources = {"mem_mb": spec["mem_mb"], "runtime": spec["runtime"], "gpu": spec["gpu"]}
    return {**resources, **slurm_placement(spec["gpu"])}


def host_only_resources(kind):
    """`kind`'s host memory and runtime without its GPUs: a job that holds a model in RAM but
    computes nothing on a GPU (composing a checkpoint) need not hold a GPU node's GPU."""
    spec = config["resources"][kind]
    return {"mem_mb": spec["mem_mb"], "runtime": spec["runtime"], "gpu": 0, **slurm_placement(0)}


def slurm_placement(gpu):
    slurm = config["slurm"]
    partition = slurm["gpu_partition"] if gpu else slurm["partition"]
    placement = {"slurm_partition": partition} if partition else {}
    if gpu:
        # sbatch refuses --gres and --gpus that disagree on the GPU type, so both name it or neither
        model = slurm["gpu_model"]
        placement["gres"] = f"gpu:{model}:{gpu}" if model else f"gpu:{gpu}"
        if model:
            placement["gpu_model"] = model
    return placement


def job_threads(kind):
    return config["resources"][kind]["threads"]


# The models a method alone uses: a run without that method does not build their tiny versions
# (a preset layered on config.yaml keeps the demo's entries). Models of no method here are built always.
METHOD_MODELS = {
    "cvc": {"text_llm", "masked_lm", "detector", "sam", "llava", "llava_base", "llava_base_lm", "llava_base_vision",
            "llava_base_projector", "embedder"},
    "cings": {"cings_lm", "vision_tower"},
    "tsst": {"tsst_policy", "tsst_judge"},
    "gwys": {"gwys_policy", "gwys_judge"},
}


def tiny_model_targets():
    """Every tiny model the config names for the selected methods, so the demo builds (and checks) them."""
    unused = set()
    for method, names in METHOD_MODELS.items():
        if method not in config["methods"]:
            unused |= names
    return sorted({p for name in config["models"] if name not in unused for p in [model_input(name)] if p})


def all_targets():
    targets = tiny_model_targets()
    if "cvc" in config["methods"]:
        targets += cvc_targets() + cvc_training_targets() + cvc_report_targets() + cvc_eval_targets()
    if "cings" in config["methods"]:
        targets += cings_targets() + cings_eval_targets() + cings_pope_targets() + cings_report_targets()
    if "tsst" in config["methods"]:
        targets += tsst_targets() + tsst_eval_targets() + tsst_report_targets()
    if "gwys" in config["methods"]:
        targets += gwys_targets() + gwys_report_targets()
    return targets
