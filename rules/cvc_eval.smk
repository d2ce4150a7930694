# CVC evaluation: the base LLaVA and the CVC-trained checkpoint on the configured benchmarks
# (lmms-eval, groundflow.evaluate.harness; one job per checkpoint x benchmark) and on the held-out
# occluded-object probe (groundflow.cvc.probe: instances whose pictures were split off before trial
# learning, answered by each checkpoint and scored by the trial answer check), gathered into one
# table. The probe split itself sits between the instructions and the trials (cvc_probe_split).

from groundflow.evaluate.harness import JUDGE_TASKS

CVC_EVAL = CVC["eval"]
CVC_PROBE = CVC["probe"]
CVC_EVAL_FIXTURE = CVC_EVAL["fixture"]["dir"]
CVC_BENCHMARKS = {b["name"]: b for b in CVC_EVAL["benchmarks"]}
# the checkpoints compared: the configured ones (name -> models key), then this run's CVC model;
# the first is the reference the table's deltas are taken against
CVC_TRAINED = "cvc"
CVC_EVAL_MODELS = [*CVC_EVAL["models"], CVC_TRAINED]
CVC_PROBE_ON = CVC_PROBE["fraction"] > 0
CVC_PROBE_NAME = "occluded_probe"
_unknown = {name: key for name, key in CVC_EVAL["models"].items() if key not in config["models"]}
if _unknown:
    raise ValueError(f"cvc.eval.models names models that `models` lacks: {_unknown}")
if CVC_PROBE_NAME in CVC_BENCHMARKS or CVC_TRAINED in CVC_EVAL["models"]:
    raise ValueError(f"cvc.eval: the names {CVC_PROBE_NAME!r} (a benchmark) and {CVC_TRAINED!r} (a model) are "
                     "the probe's and the trained checkpoint's; give yours another name")

wildcard_constraints:
    cvc_model="|".join(CVC_EVAL_MODELS),
    cvc_benchmark="|".join(CVC_BENCHMARKS) or "(?!)",


def cvc_eval(*parts):
    return cvc("eval", *parts)


def cvc_eval_targets():
    if not CVC_EVAL_MODELS or not (CVC_BENCHMARKS or CVC_PROBE_ON):
        return []
    return [cvc_eval("table.tsv"), cvc_eval("table.md"), cvc("eval_stage_counts.tsv"), cvc_plot("eval")]


def cvc_checkpoint(model):
    """The model spec of a compared checkpoint: the trained one keeps its base's settings (dtype)."""
    if model == CVC_TRAINED:
        return {**config["models"][TRAIN_BASE], "path": cvc("train", "model")}
    return config["models"][CVC_EVAL["models"][model]]


def cvc_checkpoint_input(wildcards):
    if wildcards.cvc_model == CVC_TRAINED:
        return cvc("train", "model")
    return model_input(CVC_EVAL["models"][wildcards.cvc_model])


def cvc_eval_fixture_files():
    return {f"{CVC_EVAL_FIXTURE}/{name}.jsonl" for name in ("yes_no", "multiple_choice")}


def cvc_benchmark_paths(benchmark):
    """Every data file of a benchmark, flattened ({split: path | [paths]})."""
    paths = []
    for value in benchmark["data_files"].values():
        paths += [value] if isinstance(value, str) else list(value)
    return paths


def cvc_benchmark_input(wildcards):
    """The benchmark's files that exist or that the fixture rule makes; a missing one is left to
    the job, which names it (a preset plans before its benchmarks are downloaded)."""
    import glob

    fixture = cvc_eval_fixture_files()
    found = []
    for path in cvc_benchmark_paths(CVC_BENCHMARKS[wildcards.cvc_benchmark]):
        if glob.has_magic(path):  # a dataset's shards
            found += sorted(glob.glob(path))
        elif user_file_or_fixture(path, path if path in fixture else None):
            found.append(path)
    return found


def cvc_probe_result(model):
    return cvc_eval(CVC_PROBE_NAME, f"{model}.json")


def cvc_eval_jobs():
    """(benchmark, model) of every evaluation job, the probe's last."""
    jobs = [(b, m) for b in CVC_BENCHMARKS for m in CVC_EVAL_MODELS]
    return jobs + ([(CVC_PROBE_NAME, m) for m in CVC_EVAL_MODELS] if CVC_PROBE_ON else [])


def cvc_eval_results():
    return [cvc_eval(b, f"{m}.json") for b, m in cvc_eval_jobs()]


rule cvc_probe_split:
    input:
        records=stage_records("instructions"),
        instruction_data=cvc_instruction_data_input,
    output:
        trial=cvc("trial_pool", "{shard}.parquet"),
        probe=cvc("probe", "{shard}.parquet"),
        counts=cvc("probe", "{shard}.counts.json"),
    params:
        fraction=CVC_PROBE["fraction"],
        unseen_by_instruction_data=CVC_PROBE["unseen_by_instruction_data"],
        seed=config["seed"],
    log:
        "logs/cvc/probe_split/{shard}.log",
    benchmark:
        "benchmarks/cvc/probe_split/{shard}.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cvc_probe_split.py"


rule cvc_eval_fixture:
    output:
        yes_no=f"{CVC_EVAL_FIXTURE}/yes_no.jsonl",
        multiple_choice=f"{CVC_EVAL_FIXTURE}/multiple_choice.jsonl",
        images=directory(f"{CVC_EVAL_FIXTURE}/images"),
    params:
        seed=config["seed"],
        n_images=CVC_EVAL["fixture"]["n_images"],
        include_bad=CVC_EVAL["fixture"]["include_bad"],
    log:
        "logs/cvc/eval/fixture.log",
    benchmark:
        "benchmarks/cvc/eval/fixture.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cvc_eval_fixture.py"


rule cvc_eval:
    input:
        data=cvc_benchmark_input,
        model=cvc_checkpoint_input,
    output:
        result=cvc_eval("{cvc_benchmark}", "{cvc_model}.json"),
    params:
        model=lambda wildcards: cvc_checkpoint(wildcards.cvc_model),
        benchmark=lambda wildcards: CVC_BENCHMARKS[wildcards.cvc_benchmark],
        limit=CVC_EVAL["limit"],
        batch_size=CVC_EVAL["batch_size"],
        # for judge-graded tasks only (another's params stay unchanged when the judge changes); the
        # endpoint only: its key is read in the job from the environment variable it names
        judge=lambda wildcards: CVC_EVAL["judge"] if CVC_BENCHMARKS[wildcards.cvc_benchmark]["task"] in JUDGE_TASKS else None,
    log:
        "logs/cvc/eval/{cvc_benchmark}/{cvc_model}.log",
    benchmark:
        "benchmarks/cvc/eval/{cvc_benchmark}/{cvc_model}.tsv"
    threads: job_threads("infer_job")
    resources:
        **job_resources("infer_job"),
    script:
        "../workflow/scripts/cvc_eval.py"


rule cvc_probe_eval:
    input:
        probe=expand(cvc("probe", "{shard}.parquet"), shard=SHARDS),
        images=expand(cvc("occluded", "{shard}"), shard=SHARDS),
        model=cvc_checkpoint_input,
        embedder=model_input("embedder"),
    output:
        result=cvc_probe_result("{cvc_model}"),
        answers=cvc_eval(CVC_PROBE_NAME, "{cvc_model}.answers.parquet"),
    params:
        # asked in the layout CVC trains in, by both checkpoints alike
        generation=lambda wildcards: {**config["generation"]["vision"], "batch_size": CVC_PROBE["batch_size"],
                                      "model": cvc_checkpoint(wildcards.cvc_model),
                                      "conversation_format": CVC["conversation_format"]},
        embedder=config["models"]["embedder"],
        # the trial answer check: the same embedder, threshold and batch as cvc_checking
        opts={"max_new_tokens": CVC_PROBE["max_new_tokens"], "chunk_size": CVC_PROBE["chunk_size"],
              "threshold": CVC["checking"]["threshold"], "batch_size": CVC["checking"]["batch_size"]},
        image_dir=cvc(),
        progress_dir=lambda wildcards: cvc(".progress", "eval", CVC_PROBE_NAME, wildcards.cvc_model),
    log:
        f"logs/cvc/eval/{CVC_PROBE_NAME}/{{cvc_model}}.log",
    benchmark:
        f"benchmarks/cvc/eval/{CVC_PROBE_NAME}/{{cvc_model}}.tsv"
    threads: job_threads("infer_job")
    resources:
        **job_resources("infer_job"),
    script:
        "../workflow/scripts/cvc_probe_eval.py"


rule cvc_eval_table:
    input:
        results=cvc_eval_results(),
        splits=expand(cvc("probe", "{shard}.counts.json"), shard=SHARDS),
    output:
        table=cvc_eval("table.tsv"),
        markdown=cvc_eval("table.md"),
        counts=cvc("eval_stage_counts.tsv"),
        rejects=cvc("eval_rejects.parquet"),
    params:
        # the (benchmark, model) of each file of input.results, in order
        jobs=cvc_eval_jobs(),
        checkpoints=CVC_EVAL_MODELS,
        benchmarks=[{"name": b["name"], "metric": b["metric"], "paper_delta": b.get("paper_delta")}
                    for b in CVC_BENCHMARKS.values()]
        + ([{"name": CVC_PROBE_NAME, "metric": "probe_accuracy", "paper_delta": None}] if CVC_PROBE_ON else []),
        notes=CVC_EVAL["paper_notes"],
    log:
        "logs/cvc/eval/table.log",
    benchmark:
        "benchmarks/cvc/eval/table.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cvc_eval_table.py"


rule plot_cvc_eval:
    input:
        table=cvc_eval("table.tsv"),
    output:
        plot=report(cvc_plot("eval"), caption=cvc_caption("cvc_eval"), category=REPORT_CATEGORY,
                    subcategory="5 Evaluation"),
    params:
        checkpoints=CVC_EVAL_MODELS,
    log:
        plot_log("eval"),
    benchmark:
        plot_benchmark("eval")
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_cvc_eval.py"
