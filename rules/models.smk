# Tiny randomly initialised models of the real architectures for the embedded default.
# They are saved like real checkpoints and loaded by path through the same loaders.


rule build_tiny_model:
    output:
        directory(config["models_dir"] + "/tiny-{kind}"),
    params:
        seed=config["seed"],
    wildcard_constraints:
        kind="llama|roberta|grounding-dino|sam|llava|llama3|clip|tsst-llava|gwys-qwen-vl",
    log:
        "logs/models/tiny-{kind}.log",
    benchmark:
        "benchmarks/models/tiny-{kind}.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/build_tiny_model.py"


# CVC's training base, LLaVA-1.5's stage-1 state in HF format, composed from its three released
# parts when the config names them (models.llava_base_lm / _vision / _projector); otherwise
# models.llava_base (if any) is a checkpoint the user supplies.
COMPOSED_LLAVA_BASE = "llava_base_projector" in config["models"]


def llava_base_input():
    """What cvc_train needs built first to start from models.llava_base."""
    return config["models"]["llava_base"]["path"] if COMPOSED_LLAVA_BASE else model_input("llava_base")


def projector_file_input():
    """The projector file: the tiny one a rule writes, or the user's file once it exists (so a
    preset plans before the download; the job names a missing file)."""
    path = config["models"]["llava_base_projector"]["path"]
    return path if tiny_model_input(path) or os.path.exists(path) else []


if COMPOSED_LLAVA_BASE:

    rule compose_llava_base:
        input:
            lm=model_input("llava_base_lm"),
            vision=model_input("llava_base_vision"),
            projector=projector_file_input(),
        output:
            directory(config["models"]["llava_base"]["path"]),
        params:
            lm=config["models"]["llava_base_lm"],
            vision=config["models"]["llava_base_vision"],
            projector=config["models"]["llava_base_projector"]["path"],
        log:
            "logs/models/compose_llava_base.log",
        benchmark:
            "benchmarks/models/compose_llava_base.tsv"
        # it holds the whole LM in memory (~15 GB for a 7B in bf16, more than a cpu_job has) but
        # computes nothing on a GPU: a model job's host memory, no GPU
        threads: job_threads("model_job")
        resources:
            **host_only_resources("model_job"),
        script:
            "../workflow/scripts/compose_llava_base.py"


    # A stand-in for the stage-1 mm_projector.bin in the original release's format, sized to the
    # (tiny) LM and CLIP it joins: the embedded default composes its base through the real path.
    rule build_tiny_projector:
        input:
            lm=model_input("llava_base_lm"),
            vision=model_input("llava_base_vision"),
        output:
            config["models_dir"] + "/tiny-projector/mm_projector.bin",
        params:
            lm=config["models"]["llava_base_lm"]["path"],
            vision=config["models"]["llava_base_vision"]["path"],
            seed=config["seed"],
        log:
            "logs/models/tiny-projector.log",
        threads: job_threads("cpu_job")
        resources:
            **job_resources("cpu_job"),
        script:
            "../workflow/scripts/build_tiny_projector.py"
