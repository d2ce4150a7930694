# CVC trial learning: sample rationales on occluded images, extract and check answers, build the
# hybrid training data (instruction data + CoT + answers), train LLaVA on it.

TRIAL_STAGES = ["trials", "extraction", "checking"]
# training starts from `models.llava_base` when given (the paper: the stage-1 projector), else `llava`
TRAIN_BASE = "llava_base" if "llava_base" in config["models"] else "llava"


def cvc_training_targets():
    return [cvc("train", "model"), cvc("hybrid", "train.json")]


rule cvc_trials:
    input:
        # the instructions less the pictures held out for the probe (rules/cvc_eval.smk)
        records=cvc("trial_pool", "{shard}.parquet"),
        images=cvc("occluded", "{shard}"),
        model=generation_model_input("vision", "llava"),
    output:
        **stage_outputs("trials"),
    params:
        generation={**generation_spec("vision", "llava"), "conversation_format": CVC["trials"]["conversation_format"]},
        opts=CVC["trials"],
        # off a GPU, the memory the stage checks its batch against (groundflow.preflight)
        gpu_memory_gib=config["resources"]["model_job"]["gpu_memory_gib"],
        seed=config["seed"],
        image_dir=cvc(),
        progress_dir=progress_dir("trials"),
    log:
        stage_log("trials"),
    benchmark:
        stage_benchmark("trials")
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/cvc_trials.py"


rule cvc_extraction:
    input:
        records=stage_records("trials"),
        model=generation_model_input("text", "text_llm"),
        # a user's prompt file is an input, so editing it re-runs the stage (null: ours, packaged)
        prompt=CVC["extraction"]["prompt"] or [],
    output:
        **stage_outputs("extraction"),
    params:
        generation=generation_spec("text", "text_llm"),
        opts=CVC["extraction"],
        progress_dir=progress_dir("extraction"),
    log:
        stage_log("extraction"),
    benchmark:
        stage_benchmark("extraction")
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/cvc_extraction.py"


rule cvc_checking:
    input:
        records=stage_records("extraction"),
        model=model_input("embedder"),
    output:
        **stage_outputs("checking"),
    params:
        models=model_params("embedder"),
        opts=CVC["checking"],
        progress_dir=progress_dir("checking"),
    log:
        stage_log("checking"),
    benchmark:
        stage_benchmark("checking")
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/cvc_checking.py"


rule cvc_hybrid:
    input:
        checked=expand(cvc("checking", "{shard}.parquet"), shard=SHARDS),
        instruction_data=cvc_instruction_data_input,
        rejects=expand(cvc("{stage}", "{shard}.rejects.parquet"), stage=TRIAL_STAGES, shard=SHARDS),
        counts=expand(cvc("{stage}", "{shard}.counts.json"), stage=TRIAL_STAGES, shard=SHARDS),
    output:
        llava_json=cvc("hybrid", "train.json"),
        parquet=cvc("hybrid", "train.parquet"),
        counts=cvc("trial_stage_counts.tsv"),
        rejects=cvc("trial_rejects.parquet"),
    params:
        opts=CVC["selection"],
        instruction_data=CVC["instruction_data"],
        occluded_prefix=cvc() + "/",
        seed=config["seed"],
    log:
        "logs/cvc/hybrid.log",
    benchmark:
        "benchmarks/cvc/hybrid.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cvc_hybrid.py"


rule cvc_train:
    input:
        records=cvc("hybrid", "train.json"),
        model=llava_base_input() if TRAIN_BASE == "llava_base" else model_input(TRAIN_BASE),
    output:
        model=directory(cvc("train", "model")),
        summary=cvc("train", "train_summary.json"),
    params:
        model=config["models"][TRAIN_BASE],
        # the trainer takes a format's name as its chat template (groundflow.train.chat_formats)
        train={**train_params(CVC["train"]), "chat_template": CVC["conversation_format"]},
        out_dir=cvc("train"),
    log:
        "logs/cvc/train.log",
    benchmark:
        "benchmarks/cvc/train.tsv"
    threads: job_threads("train_job")
    resources:
        **job_resources("train_job"),
    script:
        "../workflow/scripts/train_sft.py"
