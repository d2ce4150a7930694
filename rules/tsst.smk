# TSST (specs/tsst.md): question sets -> warm-up data -> round 0 policy + value (LoRA on LLaVA) ->
# for each round it = 1..tsst.rounds: value-guided sentence beam search of round it-1's models on
# every train set (sharded) -> LLM-judge verification -> D+ (policy) and D_v (value) data ->
# round it's policy + value. rules/tsst_eval.smk evaluates every round on the eval sets.
# Included only when the config has a `tsst` section (Snakefile).
import re

TSST = config["tsst"]
TSST_FIXTURE = TSST["fixture"]["dir"]
TSST_ROUNDS = list(range(TSST["rounds"] + 1))  # round 0 = warm-up
TSST_FIXTURE_FILES = {
    "train": f"{TSST_FIXTURE}/train.jsonl",
    "eval": f"{TSST_FIXTURE}/eval.jsonl",
    "vcr": f"{TSST_FIXTURE}/vcr/val.jsonl",
    "cot": f"{TSST_FIXTURE}/cot.jsonl",
}
TSST_FIXTURE_DIRS = {"images": f"{TSST_FIXTURE}/images", "vcr_images": f"{TSST_FIXTURE}/vcr/vcr1images"}

TSST_SETS = {d["name"]: d for d in TSST["datasets"]}
if len(TSST_SETS) != len(TSST["datasets"]):
    raise ValueError("tsst.datasets names a set twice")
TSST_TRAIN_SETS = [name for name, d in TSST_SETS.items() if d["role"] == "train"]
TSST_EVAL_SETS = [name for name, d in TSST_SETS.items() if d["role"] == "eval"]
if "tsst" in config["methods"]:
    if "tsst_policy" not in config["models"]:
        raise ValueError("methods: [tsst] needs models.tsst_policy (the LLaVA both TSST models start from)")
    if not TSST_TRAIN_SETS:
        raise ValueError("tsst.datasets has no set with role: train to search on")
    # a partition is a quoted "start_end" string; YAML reads an unquoted 440_499 as 440499
    from groundflow.tsst.questions import parse_partition

    for _name, _entry in TSST_SETS.items():
        if _entry.get("partition") is not None:
            parse_partition(_entry["partition"])


wildcard_constraints:
    it=r"\d+",
    tsst_set="|".join(re.escape(n) for n in TSST_SETS) or "^$",


def tsst(*parts):
    return results("tsst", *parts)


def tsst_fixture_input(path):
    """A TSST input file: the fixture rule's output when it is the fixture's, else the user's file."""
    return user_file_or_fixture(path, path if path in TSST_FIXTURE_FILES.values() else None)


def tsst_folder_input(path):
    """An image folder: the fixture's (made by tsst_fixture) or the user's (read as it is)."""
    return path if path in TSST_FIXTURE_DIRS.values() else []


def tsst_prompt_files():
    """A user's prompt files are inputs, so editing one re-runs what renders it (null: ours)."""
    return [p for p in TSST["prompts"].values() if p]


rule tsst_fixture:
    output:
        **TSST_FIXTURE_FILES,
        **{key: directory(path) for key, path in TSST_FIXTURE_DIRS.items()},
        summary=f"{TSST_FIXTURE}/summary.json",
    params:
        seed=config["seed"],
        include_bad=TSST["fixture"]["include_bad"],
    log:
        "logs/tsst/fixture.log",
    benchmark:
        "benchmarks/tsst/fixture.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/tsst_fixture.py"


rule tsst_questions:
    input:
        questions=lambda wildcards: tsst_fixture_input(TSST_SETS[wildcards.tsst_set]["path"]),
        images=lambda wildcards: tsst_folder_input(TSST_SETS[wildcards.tsst_set]["image_root"]),
        subset=lambda wildcards: TSST_SETS[wildcards.tsst_set].get("subset") or [],
    output:
        questions=tsst("questions", "{tsst_set}.parquet"),
        rejects=tsst("questions", "{tsst_set}.rejects.parquet"),
        counts=tsst("questions", "{tsst_set}.counts.json"),
    params:
        name=lambda wildcards: wildcards.tsst_set,
        kind=lambda wildcards: TSST_SETS[wildcards.tsst_set]["kind"],
        partition=lambda wildcards: TSST_SETS[wildcards.tsst_set].get("partition"),
        source=lambda wildcards: TSST_SETS[wildcards.tsst_set].get("source"),
        image_root=lambda wildcards: TSST_SETS[wildcards.tsst_set]["image_root"],
    log:
        "logs/tsst/questions/{tsst_set}.log",
    benchmark:
        "benchmarks/tsst/questions/{tsst_set}.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/tsst_questions.py"


rule tsst_warmup_data:
    input:
        cot=tsst_fixture_input(TSST["warmup"]["cot"]),
        images=tsst_folder_input(TSST["warmup"]["image_root"]),
        prompts=tsst_prompt_files(),
    output:
        policy=tsst("round0", "data", "policy.json"),
        value=tsst("round0", "data", "value.json"),
        rejects=tsst("round0", "data", "rejects.parquet"),
        counts=tsst("round0", "data", "counts.json"),
    params:
        prompts=TSST["prompts"],
        cut=TSST["search"].get("cut", "sentence"),
        image_root=TSST["warmup"]["image_root"],
    log:
        "logs/tsst/round0/data.log",
    benchmark:
        "benchmarks/tsst/round0/data.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/tsst_warmup_data.py"


TSST_SHARDS = list(range(TSST["shards"] or config["shards"]))


def tsst_model(kind, it):
    """Round `it`'s merged checkpoint of `kind` (policy | value)."""
    return tsst(f"round{it}", kind, "model")


def tsst_start(kind, it):
    """What round `it`'s `kind` starts from: round it-1's checkpoint, or models.tsst_policy (round 0,
    start_from: base; a fresh value head on it). Nothing to track for a hub id."""
    it = int(it)
    if it == 0 or TSST["start_from"] == "base":
        return model_input("tsst_policy")
    return tsst_model(kind, it - 1)


def tsst_search_settings(tsst_set):
    """tsst.search with the set's own settings over it."""
    return {**TSST["search"], **(TSST_SETS[tsst_set].get("search") or {})}


def tsst_job_models():
    """Device and dtype of the policy and value model a job loads (paths come from its inputs)."""
    spec = {k: v for k, v in config["models"]["tsst_policy"].items() if k != "path"}
    return {"policy": spec, "value": spec}


def tsst_judge_spec():
    """The judge's generator (None: rules only, no model), from tsst.judge.generation and models.tsst_judge."""
    if "tsst_judge" not in config["models"]:
        return None
    return {**TSST["judge"]["generation"], "model": config["models"]["tsst_judge"]}


def tsst_judge_input():
    return generation_model_input_of(TSST["judge"]["generation"], "tsst_judge") if "tsst_judge" in config["models"] else []


def generation_model_input_of(generation, model_name):
    return model_input(model_name) if generation["backend"] == "hf" or generation["serve"] else []


def tsst_judge_opts():
    return {k: v for k, v in TSST["judge"].items() if k != "generation"}


def tsst_search_params(tsst_set):
    job = TSST["search_job"]
    return {
        "image_root": TSST_SETS[tsst_set]["image_root"],
        "search": tsst_search_settings(tsst_set),
        "seed": config["seed"],
        "chunk_size": job["chunk_size"],
        "batch_rows": job["batch_rows"],
        "value_batch_size": job["value_batch_size"],
        "prompts": TSST["prompts"],
        "models": tsst_job_models(),
    }


def tsst_targets():
    """What `methods: [tsst]` builds: every round's two checkpoints and each round's data counts;
    rules/tsst_eval.smk adds the evaluation through tsst_eval_targets()."""
    return [tsst_model(kind, it) for it in TSST_ROUNDS for kind in ("policy", "value")] + [
        tsst(f"round{it}", "data", "counts.json") for it in TSST_ROUNDS
    ]


rule tsst_split_questions:
    input:
        questions=tsst("questions", "{tsst_set}.parquet"),
    output:
        shards=[tsst("questions", "{tsst_set}", f"shard{shard}.parquet") for shard in TSST_SHARDS],
    log:
        "logs/tsst/questions/{tsst_set}.split.log",
    benchmark:
        "benchmarks/tsst/questions/{tsst_set}.split.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/tsst_split_questions.py"


# Both models train on the round's data through the shared trainer. Training files name their
# images from the run folder (each record under its own set's folder), so image_root is ".".
rule tsst_train_policy:
    input:
        records=tsst("round{it}", "data", "policy.json"),
        start=lambda wildcards: tsst_start("policy", wildcards.it),
    output:
        model=directory(tsst("round{it}", "policy", "model")),
        summary=tsst("round{it}", "policy", "train_summary.json"),
    params:
        model=config["models"]["tsst_policy"],
        train=train_params(TSST["policy_train"]),
        out_dir=tsst("round{it}", "policy"),
        image_root=".",
    log:
        "logs/tsst/round{it}/train_policy.log",
    benchmark:
        "benchmarks/tsst/round{it}/train_policy.tsv"
    threads: job_threads("train_job")
    resources:
        **job_resources("train_job"),
    script:
        "../workflow/scripts/tsst_train_policy.py"


rule tsst_train_value:
    input:
        records=tsst("round{it}", "data", "value.json"),
        start=lambda wildcards: tsst_start("value", wildcards.it),
    output:
        model=directory(tsst("round{it}", "value", "model")),
        summary=tsst("round{it}", "value", "train_summary.json"),
    params:
        model=config["models"]["tsst_policy"],
        train=train_params(TSST["value_train"]),
        value=TSST["value"],
        out_dir=tsst("round{it}", "value"),
        image_root=".",
    log:
        "logs/tsst/round{it}/train_value.log",
    benchmark:
        "benchmarks/tsst/round{it}/train_value.tsv"
    threads: job_threads("train_job")
    resources:
        **job_resources("train_job"),
    script:
        "../workflow/scripts/tsst_train_value.py"


# Round it (>= 1) searches each train set with round it-1's policy and value model.
rule tsst_search:
    input:
        records=tsst("questions", "{tsst_set}", "shard{shard}.parquet"),
        policy=lambda wildcards: tsst_model("policy", int(wildcards.it) - 1),
        value=lambda wildcards: tsst_model("value", int(wildcards.it) - 1),
    output:
        kept=tsst("round{it}", "search", "{tsst_set}", "shard{shard}.parquet"),
        rejects=tsst("round{it}", "search", "{tsst_set}", "shard{shard}.rejects.parquet"),
        counts=tsst("round{it}", "search", "{tsst_set}", "shard{shard}.counts.json"),
    params:
        **{k: (lambda wildcards, k=k: tsst_search_params(wildcards.tsst_set)[k]) for k in
           ("image_root", "search", "seed", "chunk_size", "batch_rows", "value_batch_size", "prompts", "models")},
        progress_dir=tsst(".progress", "round{it}", "search", "{tsst_set}", "shard{shard}"),
    wildcard_constraints:
        it=r"[1-9]\d*",
    log:
        "logs/tsst/round{it}/search/{tsst_set}/shard{shard}.log",
    benchmark:
        "benchmarks/tsst/round{it}/search/{tsst_set}/shard{shard}.tsv"
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/tsst_search.py"


# Verdicts are cached per set and shard (the same questions every round; rounds run one after the
# other), so a re-run or a later round asks the judge nothing it answered before.
rule tsst_verify:
    input:
        search=tsst("round{it}", "search", "{tsst_set}", "shard{shard}.parquet"),
        questions=tsst("questions", "{tsst_set}.parquet"),
        judge=tsst_judge_input(),
    output:
        verified=tsst("round{it}", "verified", "{tsst_set}", "shard{shard}.parquet"),
        rejects=tsst("round{it}", "verified", "{tsst_set}", "shard{shard}.rejects.parquet"),
        counts=tsst("round{it}", "verified", "{tsst_set}", "shard{shard}.counts.json"),
    params:
        judge=tsst_judge_spec(),
        judge_opts=tsst_judge_opts(),
        cache=tsst(".judge_cache", "{tsst_set}", "shard{shard}.jsonl"),
    log:
        "logs/tsst/round{it}/verify/{tsst_set}/shard{shard}.log",
    benchmark:
        "benchmarks/tsst/round{it}/verify/{tsst_set}/shard{shard}.tsv"
    threads: job_threads("model_job")
    resources:
        **(job_resources("model_job") if tsst_judge_spec() and TSST["judge"]["generation"]["backend"] == "hf"
           else job_resources("cpu_job")),
    script:
        "../workflow/scripts/tsst_verify.py"


rule tsst_round_data:
    input:
        verified=[tsst("round{it}", "verified", s, f"shard{shard}.parquet") for s in TSST_TRAIN_SETS for shard in TSST_SHARDS],
        questions=[tsst("questions", f"{s}.parquet") for s in TSST_TRAIN_SETS],
        previous_policy=lambda wildcards: tsst(f"round{int(wildcards.it) - 1}", "data", "policy.json") if TSST["labels"]["accumulate"] else [],
        previous_value=lambda wildcards: tsst(f"round{int(wildcards.it) - 1}", "data", "value.json") if TSST["labels"]["accumulate"] else [],
        prompts=tsst_prompt_files(),
    output:
        policy=tsst("round{it}", "data", "policy.json"),
        value=tsst("round{it}", "data", "value.json"),
        counts=tsst("round{it}", "data", "counts.json"),
    params:
        round=lambda wildcards: int(wildcards.it),
        opts={**TSST["labels"], "sentence_cut": tsst_search_settings(TSST_TRAIN_SETS[0]).get("cut", "sentence")},
        prompts=TSST["prompts"],
        # aligned with input.questions: each set's images are named from the run folder
        image_roots=[TSST_SETS[s]["image_root"] for s in TSST_TRAIN_SETS],
    wildcard_constraints:
        it=r"[1-9]\d*",
    log:
        "logs/tsst/round{it}/data.log",
    benchmark:
        "benchmarks/tsst/round{it}/data.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/tsst_round_data.py"
