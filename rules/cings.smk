# CINGS: Self-RAG records -> converted (marker form) -> tokenised once per mode -> one trained LM
# per mode (results/cings/train/{mode}/model) -> for `cings.vl.modes`, a LLaVA on that LM trained
# in two stages (projector; LM + projector). rules/cings_eval.smk evaluates the trained LMs.

CINGS_ON = "cings" in config
CINGS = config.get("cings", {})
CINGS_MODES = list(CINGS.get("modes", []))
CINGS_VL_MODES = list(CINGS.get("vl", {}).get("modes", []))
CINGS_FIXTURE = CINGS.get("fixture", {}).get("dir", "resources/fixtures/cings")

if CINGS_ON and "cings" in config["methods"]:
    for _name in ["cings_lm"] + (["vision_tower"] if CINGS_VL_MODES else []):
        if _name not in config["models"]:
            raise ValueError(f"methods: [cings] needs models.{_name} in the config")
    _unknown_vl = sorted(set(CINGS_VL_MODES) - set(CINGS_MODES))
    if _unknown_vl:
        raise ValueError(f"cings.vl.modes {_unknown_vl} are not trained: add them to cings.modes")

wildcard_constraints:
    cings_mode="no_context|context|no_mask",


def cings(*parts):
    return results("cings", *parts)


def cings_targets():
    """What `methods: [cings]` builds: one trained LM per mode, the VL LLaVAs, and the counts.
    rules/cings_eval.smk adds its evaluation table through cings_eval_targets()."""
    if not CINGS_ON:
        return []
    return (
        [cings("stage_counts.tsv"), cings("rejects.parquet")]
        + [cings("train", mode, "model") for mode in CINGS_MODES]
        + [cings("vl", mode, "stage2", "model") for mode in CINGS_VL_MODES]
    )


def cings_records_input(wildcards):
    """The records file; a missing one that no rule makes is named by the convert job at run time,
    so that a preset can be planned (`-n`) before its data are downloaded."""
    path = CINGS["records"]
    if path == f"{CINGS_FIXTURE}/selfrag.jsonl" or os.path.exists(path):
        return path
    return []


def cings_vl_data_input(kind):
    def input_fn(wildcards):
        path = CINGS["vl"][kind]["path"]
        fixture = f"{CINGS_FIXTURE}/vl/{'pretrain' if kind == 'pretrain_data' else 'instruct'}.json"
        if path == fixture or os.path.exists(path):
            return path
        return []

    return input_fn


def cings_lm_spec():
    return config["models"]["cings_lm"]


def cings_tokenizer_input():
    """The tokenizer folder when it is a tiny model built here (else a hub id: nothing to build)."""
    path = CINGS["train"]["tokenizer"]
    return path if path.startswith(config["models_dir"].rstrip("/") + "/tiny-") else []


rule cings_fixture:
    output:
        records=f"{CINGS_FIXTURE}/selfrag.jsonl",
        pretrain=f"{CINGS_FIXTURE}/vl/pretrain.json",
        instruct=f"{CINGS_FIXTURE}/vl/instruct.json",
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
        records=cings_records_input,
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
    log:
        "logs/cings/tokenize.log",
    benchmark:
        "benchmarks/cings/tokenize.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_tokenize.py"


rule cings_train:
    input:
        table=cings("tokenized", "{cings_mode}.parquet"),
        counts=cings("tokenized", "{cings_mode}.counts.json"),
        model=lambda wildcards: model_input("cings_lm"),
        tokenizer=lambda wildcards: cings_tokenizer_input(),
    output:
        model=directory(cings("train", "{cings_mode}", "model")),
        summary=cings("train", "{cings_mode}", "train_summary.json"),
    params:
        model=lambda wildcards: cings_lm_spec(),
        train=CINGS.get("train", {}),
        out_dir=cings("train", "{cings_mode}"),
    log:
        "logs/cings/train/{cings_mode}.log",
    benchmark:
        "benchmarks/cings/train/{cings_mode}.tsv"
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
        lm=cings("train", "{cings_mode}", "model"),
        vision=lambda wildcards: model_input("vision_tower"),
        records=cings_vl_data_input("pretrain_data"),
    output:
        base=directory(cings("vl", "{cings_mode}", "base")),
        model=directory(cings("vl", "{cings_mode}", "stage1", "model")),
        summary=cings("vl", "{cings_mode}", "stage1", "train_summary.json"),
    params:
        vision=lambda wildcards: config["models"]["vision_tower"],
        vision_feature_layer=CINGS.get("vl", {}).get("vision_feature_layer", -2),
        seed=config["seed"],
        records=CINGS.get("vl", {}).get("pretrain_data", {}),
        train=CINGS.get("vl", {}).get("stage1", {}),
        out_dir=cings("vl", "{cings_mode}", "stage1"),
    log:
        "logs/cings/vl/{cings_mode}/stage1.log",
    benchmark:
        "benchmarks/cings/vl/{cings_mode}/stage1.tsv"
    threads: job_threads("train_job")
    resources:
        **job_resources("train_job"),
    script:
        "../workflow/scripts/cings_vl_stage1.py"


rule cings_vl_stage2:
    input:
        model=cings("vl", "{cings_mode}", "stage1", "model"),
        records=cings_vl_data_input("instruct_data"),
    output:
        model=directory(cings("vl", "{cings_mode}", "stage2", "model")),
        summary=cings("vl", "{cings_mode}", "stage2", "train_summary.json"),
    params:
        records=CINGS.get("vl", {}).get("instruct_data", {}),
        train=CINGS.get("vl", {}).get("stage2", {}),
        system_prompt=CINGS.get("vl", {}).get("system_prompt", ""),
        out_dir=cings("vl", "{cings_mode}", "stage2"),
    log:
        "logs/cings/vl/{cings_mode}/stage2.log",
    benchmark:
        "benchmarks/cings/vl/{cings_mode}/stage2.tsv"
    threads: job_threads("train_job")
    resources:
        **job_resources("train_job"),
    script:
        "../workflow/scripts/cings_vl_stage2.py"
