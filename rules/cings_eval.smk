# CINGS evaluation: each KILT-style file -> validated records -> greedy answers of every trained
# checkpoint (one per training mode) in every prompt setting -> one comparison table.
# The checkpoints are rules/cings.smk's `results/cings/train/{mode}/model`.
import re

# Included only when the config has a `cings` section (Snakefile). It names what it needs from
# the config itself, so it also works alone: an evaluation-only workflow of checkpoints already
# under results/cings/train/{mode}/model (tests/workflow/test_cings_eval.py includes it that way).
CINGS_INFERENCE = config["cings"]["inference"]
CINGS_SCORING = config["cings"]["scoring"]
CINGS_EVAL_MODES = list(config["cings"]["modes"])
CINGS_EVAL_FIXTURE = config["cings"]["fixture"]["dir"] + "/eval.jsonl"
# dataset name -> evaluation file, in config order
CINGS_EVAL_FILES = {d["name"]: d["path"] for d in CINGS_INFERENCE["datasets"]}
if len(CINGS_EVAL_FILES) != len(CINGS_INFERENCE["datasets"]):
    raise ValueError("cings.inference.datasets names a dataset twice")


def cings_eval(*parts):
    return results("cings", "eval", *parts)


def cings_eval_runs():
    """(dataset, mode, setting) of every inference job, in table order."""
    return [
        (dataset, mode, setting)
        for dataset in CINGS_EVAL_FILES
        for mode in CINGS_EVAL_MODES
        for setting in CINGS_INFERENCE["settings"]
    ]


CINGS_EVAL_DATASETS = "|".join(re.escape(d) for d in CINGS_EVAL_FILES)


def cings_eval_targets():
    return [cings_eval("table.tsv"), cings_eval("table.parquet"), cings_eval("scores.parquet")]


def cings_eval_file_input(wildcards):
    return user_file_or_fixture(CINGS_EVAL_FILES[wildcards.dataset], CINGS_EVAL_FIXTURE)


def cings_eval_generation(wildcards):
    """The text generation backend on the checkpoint of `mode`, with cings_lm's dtype and device."""
    model = {**config["models"]["cings_lm"], "path": results("cings", "train", wildcards.mode, "model")}
    return {**config["generation"]["text"], "model": model}


rule cings_eval_fixture:
    output:
        CINGS_EVAL_FIXTURE,
    params:
        n_questions=CINGS_INFERENCE["fixture"]["n_questions"],
        n_retrieved=CINGS_INFERENCE["fixture"]["n_retrieved"],
        include_bad=CINGS_INFERENCE["fixture"]["include_bad"],
    log:
        "logs/cings/eval/fixture.log",
    benchmark:
        "benchmarks/cings/eval/fixture.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_eval_fixture.py"


rule cings_eval_records:
    input:
        eval_file=cings_eval_file_input,
    output:
        kept=cings_eval("{dataset}", "records.parquet"),
        rejects=cings_eval("{dataset}", "records.rejects.parquet"),
        counts=cings_eval("{dataset}", "records.counts.json"),
    params:
        path=lambda wildcards: CINGS_EVAL_FILES[wildcards.dataset],
    wildcard_constraints:
        dataset=CINGS_EVAL_DATASETS,
    log:
        "logs/cings/eval/{dataset}/records.log",
    benchmark:
        "benchmarks/cings/eval/{dataset}/records.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_eval_records.py"


# One job per dataset x mode answers in every setting: the checkpoint loads once, and the demo
# runs 3 model jobs instead of 12 (each job's start-up costs more than its tiny model's answers).
rule cings_infer:
    input:
        records=cings_eval("{dataset}", "records.parquet"),
        model=results("cings", "train", "{mode}", "model"),
    output:
        kept=[cings_eval("{dataset}", "{mode}", f"{s}.parquet") for s in CINGS_INFERENCE["settings"]],
        rejects=[cings_eval("{dataset}", "{mode}", f"{s}.rejects.parquet") for s in CINGS_INFERENCE["settings"]],
        counts=[cings_eval("{dataset}", "{mode}", f"{s}.counts.json") for s in CINGS_INFERENCE["settings"]],
    params:
        generation=cings_eval_generation,
        opts=CINGS_INFERENCE,
        settings=CINGS_INFERENCE["settings"],
        system_prompt=config["cings"]["data"]["system_prompt"],
        progress_dirs=[cings_eval(".progress", "{dataset}", "{mode}", s) for s in CINGS_INFERENCE["settings"]],
        # a managed `vllm serve` (generation.text.serve) writes here; the job's logs are per setting
        server_log="logs/cings/eval/{dataset}/{mode}.server.log",
    wildcard_constraints:
        dataset=CINGS_EVAL_DATASETS,
        mode="|".join(CINGS_EVAL_MODES),
    log:
        [f"logs/cings/eval/{{dataset}}/{{mode}}/{s}.log" for s in CINGS_INFERENCE["settings"]],
    benchmark:
        "benchmarks/cings/eval/{dataset}/{mode}.tsv"
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/cings_infer.py"


rule cings_eval_table:
    input:
        predictions=[cings_eval(d, m, f"{s}.parquet") for d, m, s in cings_eval_runs()],
        counts=[cings_eval(d, m, f"{s}.counts.json") for d, m, s in cings_eval_runs()],
        record_counts=[cings_eval(d, "records.counts.json") for d in CINGS_EVAL_FILES],
    output:
        tsv=cings_eval("table.tsv"),
        table=cings_eval("table.parquet"),
        scores=cings_eval("scores.parquet"),
    params:
        runs=[list(run) for run in cings_eval_runs()],
        scoring=CINGS_SCORING,
    log:
        "logs/cings/eval/table.log",
    benchmark:
        "benchmarks/cings/eval/table.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_eval_table.py"
