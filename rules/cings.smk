# CINGS: Self-RAG records -> converted (marker form) -> tokenised once per mode -> one trained LM
# per mode (results/cings/train/{mode}/model) -> for `cings.vl.modes`, a LLaVA on that LM trained
# in two stages (projector; LM + projector). rules/cings_eval.smk evaluates the trained LMs.

# Included only when the config has a `cings` section (Snakefile).
CINGS = config["cings"]
CINGS_MODES = list(CINGS["modes"])
CINGS_VL_MODES = list(CINGS["vl"]["modes"])
CINGS_FIXTURE = CINGS["fixture"]["dir"]

if "cings" in config["methods"]:
    for _name in ["cings_lm"] + (["vision_tower"] if CINGS_VL_MODES else []):
        if _name not in config["models"]:
            raise ValueError(f"methods: [cings] needs models.{_name} in the config")
    _unknown_vl = sorted(set(CINGS_VL_MODES) - set(CINGS_MODES))
    if _unknown_vl:
        raise ValueError(f"cings.vl.modes {_unknown_vl} are not trained: add them to cings.modes")

wildcard_constraints:
    mode="no_context|context|no_mask",


def cings(*parts):
    return results("cings", *parts)


def cings_targets():
    """What `methods: [cings]` builds: one trained LM per mode, the VL LLaVAs, and the counts.
    rules/cings_eval.smk adds its evaluation table through cings_eval_targets()."""
    return (
        [cings("stage_counts.tsv"), cings("rejects.parquet")]
        + [cings("train", mode, "model") for mode in CINGS_MODES]
        + [cings("vl", mode, "stage2", "model") for mode in CINGS_VL_MODES]
    )


def cings_vl_data_input(kind):
    fixture = f"{CINGS_FIXTURE}/vl/{'pretrain' if kind == 'pretrain_data' else 'instruct'}.json"
    return user_file_or_fixture(CINGS["vl"][kind]["path"], fixture)


def cings_lm_spec():
    return config["models"]["cings_lm"]


def cings_tokenizer_input():
    return tiny_model_input(CINGS["train"]["tokenizer"])


rule cings_fixture:
    output:
        records=f"{CINGS_FIXTURE}/selfrag.jsonl",
        pretrain=f"{CINGS_FIXTURE}/vl/pretrain.json",
        instruct=f"{CINGS_FIXTURE}/vl/instruct.json",
        scenes=f"{CINGS_FIXTURE}/vl/scenes.json",
        images=directory(f"{CINGS_FIXTURE}/vl/images"),
    params:
        opts=CINGS.get("fixture", {}),
        seed=config["seed"],
    log:
        "logs/cings/fixture.log",
    benchmark:
        "benchmarks/cings/fixture.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_fixture.py"


rule cings_convert:
    input:
        records=user_file_or_fixture(CINGS["records"], f"{CINGS_FIXTURE}/selfrag.jsonl"),
    output:
        table=cings("data", "records.parquet"),
        filtered=cings("data", "filtered.jsonl"),
        rejects=cings("data", "rejects.parquet"),
        counts=cings("data", "counts.json"),
    params:
        records=CINGS.get("records"),
        opts=CINGS.get("data", {}),
    log:
        "logs/cings/convert.log",
    benchmark:
        "benchmarks/cings/convert.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_convert.py"


rule cings_tokenize:
    input:
        table=cings("data", "records.parquet"),
        model=lambda wildcards: model_input("cings_lm"),
        tokenizer=lambda wildcards: cings_tokenizer_input(),
    output:
        tables=expand(cings("tokenized", "{mode}.parquet"), mode=CINGS_MODES),
        rejects=expand(cings("tokenized", "{mode}.rejects.parquet"), mode=CINGS_MODES),
        counts=expand(cings("tokenized", "{mode}.counts.json"), mode=CINGS_MODES),
    params:
        modes=CINGS_MODES,
        model=lambda wildcards: cings_lm_spec(),
        labels=CINGS.get("labels", {}),
        system_prompt=CINGS.get("data", {}).get("system_prompt", ""),
        tokenize=CINGS.get("tokenize", {}),
        train=CINGS.get("train", {}),
        # one resumable stage per mode: a killed job keeps each mode's finished chunks
        progress_dirs=[cings(".progress", "tokenize", m) for m in CINGS_MODES],
    log:
        expand("logs/cings/tokenize/{mode}.log", mode=CINGS_MODES),
    benchmark:
        "benchmarks/cings/tokenize.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_tokenize.py"


rule cings_train:
    input:
        table=cings("tokenized", "{mode}.parquet"),
        counts=cings("tokenized", "{mode}.counts.json"),
        model=lambda wildcards: model_input("cings_lm"),
        tokenizer=lambda wildcards: cings_tokenizer_input(),
    output:
        model=directory(cings("train", "{mode}", "model")),
        summary=cings("train", "{mode}", "train_summary.json"),
    params:
        model=lambda wildcards: cings_lm_spec(),
        train=train_params(CINGS.get("train", {})),
        out_dir=cings("train", "{mode}"),
    log:
        "logs/cings/train/{mode}.log",
    benchmark:
        "benchmarks/cings/train/{mode}.tsv"
    threads: job_threads("train_job")
    resources:
        **job_resources("train_job"),
    script:
        "../workflow/scripts/cings_train.py"


rule cings_counts:
    input:
        convert=cings("data", "counts.json"),
        convert_rejects=cings("data", "rejects.parquet"),
        tokenize=expand(cings("tokenized", "{mode}.counts.json"), mode=CINGS_MODES),
        tokenize_rejects=expand(cings("tokenized", "{mode}.rejects.parquet"), mode=CINGS_MODES),
        summaries=expand(cings("train", "{mode}", "train_summary.json"), mode=CINGS_MODES),
    output:
        counts=cings("stage_counts.tsv"),
        rejects=cings("rejects.parquet"),
    params:
        modes=CINGS_MODES,
    log:
        "logs/cings/counts.log",
    benchmark:
        "benchmarks/cings/counts.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_counts.py"


rule cings_vl_stage1:
    input:
        lm=cings("train", "{mode}", "model"),
        vision=lambda wildcards: model_input("vision_tower"),
        records=cings_vl_data_input("pretrain_data"),
    output:
        base=directory(cings("vl", "{mode}", "base")),
        model=directory(cings("vl", "{mode}", "stage1", "model")),
        summary=cings("vl", "{mode}", "stage1", "train_summary.json"),
    params:
        vision=lambda wildcards: config["models"]["vision_tower"],
        vision_feature_layer=CINGS.get("vl", {}).get("vision_feature_layer", -2),
        seed=config["seed"],
        records=CINGS.get("vl", {}).get("pretrain_data", {}),
        train=train_params(CINGS.get("vl", {}).get("stage1", {})),
        out_dir=cings("vl", "{mode}", "stage1"),
    log:
        "logs/cings/vl/{mode}/stage1.log",
    benchmark:
        "benchmarks/cings/vl/{mode}/stage1.tsv"
    threads: job_threads("train_job")
    resources:
        **job_resources("train_job"),
    script:
        "../workflow/scripts/cings_vl_stage1.py"


rule cings_vl_stage2:
    input:
        model=cings("vl", "{mode}", "stage1", "model"),
        records=cings_vl_data_input("instruct_data"),
    output:
        model=directory(cings("vl", "{mode}", "stage2", "model")),
        summary=cings("vl", "{mode}", "stage2", "train_summary.json"),
    params:
        records=CINGS.get("vl", {}).get("instruct_data", {}),
        train=train_params(CINGS.get("vl", {}).get("stage2", {})),
        system_prompt=CINGS.get("vl", {}).get("system_prompt", ""),
        out_dir=cings("vl", "{mode}", "stage2"),
    log:
        "logs/cings/vl/{mode}/stage2.log",
    benchmark:
        "benchmarks/cings/vl/{mode}/stage2.tsv"
    threads: job_threads("train_job")
    resources:
        **job_resources("train_job"),
    script:
        "../workflow/scripts/cings_vl_stage2.py"
