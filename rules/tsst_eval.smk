# TSST evaluation of every round's checkpoints on each eval set (specs/tsst.md §8): direct (greedy
# chain of thought from the policy alone, judged) and search (the value-guided search of round it's
# policy and value model, every finished chain judged), then one table per set (round x mode x
# metric) and its plot in the report. Included with rules/tsst.smk.


def tsst_eval(*parts):
    return tsst("eval", *parts)


def tsst_eval_targets():
    return [tsst_eval(s, name) for s in TSST_EVAL_SETS for name in ("table.parquet", "table.tsv")]


def tsst_report_targets():
    return [results("tsst", "plots", f"eval_{s}.png") for s in TSST_EVAL_SETS]


def tsst_policy_generation(wildcards):
    """The vision generator on round it's policy, with models.tsst_policy's device and dtype."""
    model = {**config["models"]["tsst_policy"], "path": tsst_model("policy", wildcards.it)}
    return {**config["generation"]["vision"], "model": model}


rule tsst_eval_direct:
    input:
        records=tsst("questions", "{tsst_set}.parquet"),
        policy=lambda wildcards: tsst_model("policy", wildcards.it),
        judge=tsst_judge_input(),
    output:
        kept=tsst_eval("{tsst_set}", "round{it}", "direct.parquet"),
        rejects=tsst_eval("{tsst_set}", "round{it}", "direct.rejects.parquet"),
        counts=tsst_eval("{tsst_set}", "round{it}", "direct.counts.json"),
    params:
        generation=tsst_policy_generation,
        judge=tsst_judge_spec(),
        judge_opts=tsst_judge_opts(),
        # per job: the eval jobs of several rounds may run at once
        judge_cache=tsst(".judge_cache", "eval", "{tsst_set}", "round{it}.direct.jsonl"),
        image_folder=lambda wildcards: TSST_SETS[wildcards.tsst_set]["image_root"],
        opts=TSST["direct"],
        prompts=TSST["prompts"],
        progress_dir=tsst(".progress", "eval", "{tsst_set}", "round{it}", "direct"),
    log:
        "logs/tsst/eval/{tsst_set}/round{it}/direct.log",
    benchmark:
        "benchmarks/tsst/eval/{tsst_set}/round{it}/direct.tsv"
    threads: job_threads("infer_job")
    resources:
        **job_resources("infer_job"),
    script:
        "../workflow/scripts/tsst_eval_direct.py"


use rule tsst_search as tsst_eval_search with:
    input:
        records=tsst("questions", "{tsst_set}.parquet"),
        policy=lambda wildcards: tsst_model("policy", wildcards.it),
        value=lambda wildcards: tsst_model("value", wildcards.it),
    output:
        kept=tsst_eval("{tsst_set}", "round{it}", "search.parquet"),
        rejects=tsst_eval("{tsst_set}", "round{it}", "search.rejects.parquet"),
        counts=tsst_eval("{tsst_set}", "round{it}", "search.counts.json"),
    params:
        **{k: (lambda wildcards, k=k: tsst_search_params(wildcards.tsst_set)[k]) for k in
           ("image_root", "search", "seed", "chunk_size", "batch_rows", "value_batch_size", "prompts", "models")},
        progress_dir=tsst(".progress", "eval", "{tsst_set}", "round{it}", "search"),
    wildcard_constraints:
        it=r"\d+",
    log:
        "logs/tsst/eval/{tsst_set}/round{it}/search.log",
    benchmark:
        "benchmarks/tsst/eval/{tsst_set}/round{it}/search.tsv"
    threads: job_threads("infer_job")
    resources:
        **job_resources("infer_job"),


use rule tsst_verify as tsst_eval_verify with:
    input:
        search=tsst_eval("{tsst_set}", "round{it}", "search.parquet"),
        questions=tsst("questions", "{tsst_set}.parquet"),
        judge=tsst_judge_input(),
    output:
        verified=tsst_eval("{tsst_set}", "round{it}", "verified.parquet"),
        rejects=tsst_eval("{tsst_set}", "round{it}", "verified.rejects.parquet"),
        counts=tsst_eval("{tsst_set}", "round{it}", "verified.counts.json"),
    params:
        judge=tsst_judge_spec(),
        judge_opts=tsst_judge_opts(),
        cache=tsst(".judge_cache", "eval", "{tsst_set}", "round{it}.search.jsonl"),
    log:
        "logs/tsst/eval/{tsst_set}/round{it}/verify.log",
    benchmark:
        "benchmarks/tsst/eval/{tsst_set}/round{it}/verify.tsv"


rule tsst_eval_table:
    input:
        questions=tsst("questions", "{tsst_set}.parquet"),
        direct=[tsst_eval("{tsst_set}", f"round{it}", "direct.parquet") for it in TSST_ROUNDS],
        search=[tsst_eval("{tsst_set}", f"round{it}", "verified.parquet") for it in TSST_ROUNDS],
    output:
        table=tsst_eval("{tsst_set}", "table.parquet"),
        tsv=tsst_eval("{tsst_set}", "table.tsv"),
    params:
        direct_rounds=TSST_ROUNDS,
        search_rounds=TSST_ROUNDS,
    log:
        "logs/tsst/eval/{tsst_set}/table.log",
    benchmark:
        "benchmarks/tsst/eval/{tsst_set}/table.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/tsst_eval_table.py"


rule plot_tsst_eval:
    input:
        table=tsst_eval("{tsst_set}", "table.parquet"),
    output:
        plot=report(
            results("tsst", "plots", "eval_{tsst_set}.png"),
            caption="../workflow/report/tsst_eval.rst",
            category="TSST",
            labels={"figure": "accuracy per round: {tsst_set}"},
        ),
    params:
        title=lambda wildcards: f"TSST on {wildcards.tsst_set}: accuracy per round",
    log:
        "logs/tsst/plots/eval_{tsst_set}.log",
    benchmark:
        "benchmarks/tsst/plots/eval_{tsst_set}.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_tsst_eval.py"
