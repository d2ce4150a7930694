# CVC data preparation: captions -> entities -> causality -> boxes -> masks -> occlusion -> questions.
# Every model stage runs one job per shard; `cvc_gather` concatenates the shards.

CVC = config["cvc"]
FIXTURE = CVC["fixture"]["dir"]
CVC_SHARD_STAGES = ["images", "entities", "causality", "grounding", "segmentation", "occlusion", "instructions"]


def cvc(*parts):
    return results("cvc", *parts)


def cvc_captions_input(wildcards):
    return user_file_or_fixture(CVC["captions"], f"{FIXTURE}/captions.jsonl")


def cvc_instruction_data_input(wildcards):
    return user_file_or_fixture(CVC["instruction_data"]["path"], f"{FIXTURE}/llava_instruct.json")


def stage_outputs(stage):
    return {
        "kept": cvc(stage, "{shard}.parquet"),
        "rejects": cvc(stage, "{shard}.rejects.parquet"),
        "counts": cvc(stage, "{shard}.counts.json"),
    }


def stage_records(stage):
    return cvc(stage, "{shard}.parquet")


def stage_log(stage):
    return f"logs/cvc/{stage}/{{shard}}.log"


def stage_benchmark(stage):
    return f"benchmarks/cvc/{stage}/{{shard}}.tsv"


def progress_dir(stage):
    return cvc(".progress", stage, "{shard}")


def cvc_targets():
    return [cvc("instances.parquet"), cvc("rejects.parquet"), cvc("stage_counts.tsv")]


rule cvc_fixture:
    output:
        captions=f"{FIXTURE}/captions.jsonl",
        images=directory(f"{FIXTURE}/images"),
        instruction_data=f"{FIXTURE}/llava_instruct.json",
    params:
        seed=config["seed"],
        n_images=CVC["fixture"]["n_images"],
        include_bad=CVC["fixture"]["include_bad"],
    log:
        "logs/cvc/fixture.log",
    benchmark:
        "benchmarks/cvc/fixture.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cvc_fixture.py"


rule cvc_ingest:
    input:
        captions=cvc_captions_input,
    output:
        shards=expand(cvc("ingest", "{shard}.parquet"), shard=SHARDS),
        rejects=cvc("ingest", "rejects.parquet"),
        counts=cvc("ingest", "counts.json"),
    params:
        captions=CVC["captions"],
        image_root=CVC["image_root"],
        n_shards=config["shards"],
    log:
        "logs/cvc/ingest.log",
    benchmark:
        "benchmarks/cvc/ingest.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cvc_ingest.py"


rule cvc_images:
    input:
        records=cvc("ingest", "{shard}.parquet"),
    output:
        **stage_outputs("images"),
    params:
        image_root=CVC["image_root"],
    log:
        stage_log("images"),
    benchmark:
        stage_benchmark("images")
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cvc_images.py"


rule cvc_entities:
    input:
        records=stage_records("images"),
        model=generation_model_input("text", "text_llm"),
        # a user's prompt file is an input, so editing it re-runs the stage (null: ours, packaged)
        prompt=CVC["entities"]["prompt"] or [],
    output:
        **stage_outputs("entities"),
    params:
        generation=generation_spec("text", "text_llm"),
        opts=CVC["entities"],
        progress_dir=progress_dir("entities"),
    log:
        stage_log("entities"),
    benchmark:
        stage_benchmark("entities")
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/cvc_entities.py"


rule cvc_causality:
    input:
        records=stage_records("entities"),
        model=model_input("masked_lm"),
    output:
        **stage_outputs("causality"),
    params:
        models=model_params("masked_lm"),
        opts=CVC["causality"],
        progress_dir=progress_dir("causality"),
    log:
        stage_log("causality"),
    benchmark:
        stage_benchmark("causality")
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/cvc_causality.py"


rule cvc_grounding:
    input:
        records=stage_records("causality"),
        model=model_input("detector") if CVC["grounding"]["backend"] == "grounding_dino" else [],
    output:
        **stage_outputs("grounding"),
    params:
        models=model_params("detector"),
        opts=CVC["grounding"],
        image_root=CVC["image_root"],
        progress_dir=progress_dir("grounding"),
    log:
        stage_log("grounding"),
    benchmark:
        stage_benchmark("grounding")
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/cvc_grounding.py"


rule cvc_segmentation:
    input:
        records=stage_records("grounding"),
        model=model_input("sam"),
    output:
        **stage_outputs("segmentation"),
        masks=directory(cvc("masks", "{shard}")),
    params:
        models=model_params("sam"),
        opts=CVC["segmentation"],
        image_root=CVC["image_root"],
        relative_to=cvc(),
        # each chunk's masks wait here (not a rule output, so not deleted before a re-run)
        progress_dir=progress_dir("segmentation"),
    log:
        stage_log("segmentation"),
    benchmark:
        stage_benchmark("segmentation")
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/cvc_segmentation.py"


rule cvc_occlusion:
    input:
        records=stage_records("segmentation"),
        masks=cvc("masks", "{shard}"),
    output:
        **stage_outputs("occlusion"),
        images=directory(cvc("occluded", "{shard}")),
    params:
        opts=CVC["occlusion"],
        seed=config["seed"],
        image_root=CVC["image_root"],
        relative_to=cvc(),
    log:
        stage_log("occlusion"),
    benchmark:
        stage_benchmark("occlusion")
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cvc_occlusion.py"


rule cvc_instructions:
    input:
        records=stage_records("occlusion"),
        model=generation_model_input("text", "text_llm"),
        # a user's prompt file is an input, so editing it re-runs the stage (null: ours, packaged)
        prompt=CVC["instructions"]["prompt"] or [],
    output:
        **stage_outputs("instructions"),
    params:
        generation=generation_spec("text", "text_llm"),
        opts=CVC["instructions"],
        progress_dir=progress_dir("instructions"),
    log:
        stage_log("instructions"),
    benchmark:
        stage_benchmark("instructions")
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/cvc_instructions.py"


rule cvc_gather:
    input:
        instances=expand(cvc("instructions", "{shard}.parquet"), shard=SHARDS),
        rejects=[cvc("ingest", "rejects.parquet")]
        + expand(cvc("{stage}", "{shard}.rejects.parquet"), stage=CVC_SHARD_STAGES, shard=SHARDS),
        counts=[cvc("ingest", "counts.json")]
        + expand(cvc("{stage}", "{shard}.counts.json"), stage=CVC_SHARD_STAGES, shard=SHARDS),
    output:
        instances=cvc("instances.parquet"),
        rejects=cvc("rejects.parquet"),
        counts=cvc("stage_counts.tsv"),
    log:
        "logs/cvc/gather.log",
    benchmark:
        "benchmarks/cvc/gather.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cvc_gather.py"
