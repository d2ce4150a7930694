# GWYS (specs/gwys.md): LLaVA-CoT-style records -> four-tag SFT data -> cold-start SFT of the
# policy; Video-R1-style rows -> RL pool -> K rollouts per sample -> reward-variance selection ->
# GRPO variants on TRL's GRPOTrainer (the baseline from the base model, ours from the SFT model,
# ablations) -> every model evaluated on the eval sets -> one table and the training curves.
# Included only when the config has a `gwys` section (Snakefile).

import re

GWYS = config["gwys"]
GWYS_FIXTURE = GWYS["fixture"]["dir"]
GWYS_FIXTURE_FILES = {
    "cot": f"{GWYS_FIXTURE}/cot.json",
    "pool": f"{GWYS_FIXTURE}/pool.json",
    "eval": f"{GWYS_FIXTURE}/eval.json",
}
GWYS_FIXTURE_DIRS = {"images": f"{GWYS_FIXTURE}/images"}
GWYS_VARIANTS = GWYS["variants"]
GWYS_EVAL_SETS = {d["name"]: d for d in GWYS["eval"]["datasets"]}
if len(GWYS_EVAL_SETS) != len(GWYS["eval"]["datasets"]):
    raise ValueError("gwys.eval.datasets names a set twice")
# the models of the table: the base policy, the cold-start SFT checkpoint, every GRPO variant
GWYS_MODELS = ["base", "sft"] + list(GWYS_VARIANTS)
if set(GWYS_VARIANTS) & {"base", "sft"}:
    raise ValueError("gwys.variants may not be named base or sft (the table's rows for the two starting models)")
if "gwys" in config["methods"]:
    if "gwys_policy" not in config["models"]:
        raise ValueError("methods: [gwys] needs models.gwys_policy (the Qwen2.5-VL or LLaVA every GWYS model starts from)")
    if any(v["rewards"].count("caption") for v in GWYS_VARIANTS.values()) and "gwys_judge" not in config["models"]:
        raise ValueError("a GWYS variant with the caption reward needs models.gwys_judge (the caption judge's model)")


wildcard_constraints:
    gwys_variant="|".join(re.escape(n) for n in GWYS_VARIANTS) or "^$",
    gwys_model="|".join(re.escape(n) for n in GWYS_MODELS),


def gwys(*parts):
    return results("gwys", *parts)


def gwys_fixture_input(path):
    """A GWYS input file: the fixture rule's output when it is the fixture's, else the user's file."""
    return user_file_or_fixture(path, path if path in GWYS_FIXTURE_FILES.values() else None)


def gwys_folder_input(path):
    """A media folder: the fixture's (made by gwys_fixture) or the user's (read as it is)."""
    return path if path in GWYS_FIXTURE_DIRS.values() else []


def gwys_prompt_files():
    """A user's prompt files are inputs, so editing one re-runs what renders it (null: ours)."""
    files = []
    for value in GWYS["prompts"].values():
        files += list(value.values()) if isinstance(value, dict) else [value]
    return [p for p in files if p]


def gwys_model_dir(name):
    """The checkpoint of a table row: the base policy, the SFT model or a GRPO variant."""
    if name == "base":
        return model_input("gwys_policy") or config["models"]["gwys_policy"]["path"]
    if name == "sft":
        return gwys("sft", "model")
    return gwys("grpo", name, "model")


def gwys_model_form(name):
    """The output form a row's model answers in: the SFT model's four tags; a variant's own."""
    if name == "base":
        return GWYS["base_form"]
    if name == "sft":
        return "four_tag"
    return GWYS_VARIANTS[name]["form"]


def gwys_targets():
    """What `methods: [gwys]` builds: the SFT model, the selection, every variant, the table."""
    return [gwys("sft", "model"), gwys("selection", "table.parquet")] + [
        gwys("grpo", v, "model") for v in GWYS_VARIANTS
    ] + [gwys("eval", "table.tsv"), gwys("stage_counts.tsv")]


def gwys_report_targets():
    return [gwys("plots", "selection.png"), gwys("plots", "training.png"), gwys("plots", "eval.png")]


rule gwys_fixture:
    output:
        **GWYS_FIXTURE_FILES,
        **{key: directory(path) for key, path in GWYS_FIXTURE_DIRS.items()},
        summary=f"{GWYS_FIXTURE}/summary.json",
    params:
        seed=config["seed"],
        include_bad=GWYS["fixture"]["include_bad"],
    log:
        "logs/gwys/fixture.log",
    benchmark:
        "benchmarks/gwys/fixture.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/gwys_fixture.py"


GWYS_POOL_SETTINGS = {k: GWYS["pool"][k] for k in ("problem_types", "video", "max_frames")}


def gwys_table_source(name):
    """(file, media folder) of the pool or an eval set."""
    entry = GWYS["pool"] if name == "pool" else GWYS_EVAL_SETS[name]
    return entry["path"], entry["media_root"]


# The four-tag SFT records name their images relative to sft_data.image_root, where the trainer reads them.
rule gwys_sft_data:
    input:
        records=gwys_fixture_input(GWYS["sft_data"]["path"]),
        images=gwys_folder_input(GWYS["sft_data"]["image_root"]),
        prompts=gwys_prompt_files(),
    output:
        records=gwys("data", "sft.json"),
        rejects=gwys("data", "sft.rejects.parquet"),
        counts=gwys("data", "sft.counts.json"),
    params:
        image_root=GWYS["sft_data"]["image_root"],
        prompt=GWYS["prompts"]["four_tag"],
    log:
        "logs/gwys/data/sft.log",
    benchmark:
        "benchmarks/gwys/data/sft.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/gwys_sft_data.py"


# The RL pool and every eval set: Video-R1-style rows into one table form (types, video policy, rejects).
rule gwys_table:
    input:
        rows=lambda wildcards: gwys_fixture_input(gwys_table_source(wildcards.gwys_table)[0]),
        media=lambda wildcards: gwys_folder_input(gwys_table_source(wildcards.gwys_table)[1]),
    output:
        pool=gwys("data", "{gwys_table}.parquet"),
        rejects=gwys("data", "{gwys_table}.rejects.parquet"),
        counts=gwys("data", "{gwys_table}.counts.json"),
    params:
        name=lambda wildcards: wildcards.gwys_table,
        media_root=lambda wildcards: gwys_table_source(wildcards.gwys_table)[1],
        settings=GWYS_POOL_SETTINGS,
    wildcard_constraints:
        gwys_table="|".join(re.escape(n) for n in ["pool", *GWYS_EVAL_SETS]),
    log:
        "logs/gwys/data/{gwys_table}.log",
    benchmark:
        "benchmarks/gwys/data/{gwys_table}.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/gwys_pool.py"


rule gwys_sft:
    input:
        records=gwys("data", "sft.json"),
        start=model_input("gwys_policy"),
        images=gwys_folder_input(GWYS["sft_data"]["image_root"]),
    output:
        model=directory(gwys("sft", "model")),
        summary=gwys("sft", "train_summary.json"),
    params:
        model=config["models"]["gwys_policy"],
        train=train_params(GWYS["sft"]["train"]),
        out_dir=gwys("sft"),
        image_root=GWYS["sft_data"]["image_root"],
    log:
        "logs/gwys/sft.log",
    benchmark:
        "benchmarks/gwys/sft.tsv"
    threads: job_threads("train_job")
    resources:
        **job_resources("train_job"),
    script:
        "../workflow/scripts/gwys_sft.py"


GWYS_ROLLOUT_SHARDS = list(range(GWYS["rollouts"]["shards"] or config["shards"]))


def gwys_policy_generation(model_dir):
    """The shared vision generator on `model_dir`, with models.gwys_policy's device and dtype."""
    return {**config["generation"]["vision"], **(GWYS["rollouts"].get("generation") or {}),
            "model": {**config["models"]["gwys_policy"], "path": model_dir}}


def gwys_rollout_policy():
    return gwys_model_dir(GWYS["rollouts"]["policy"])


rule gwys_split_pool:
    input:
        pool=gwys("data", "pool.parquet"),
    output:
        shards=[gwys("selection", "pool", f"shard{shard}.parquet") for shard in GWYS_ROLLOUT_SHARDS],
    log:
        "logs/gwys/selection/split.log",
    benchmark:
        "benchmarks/gwys/selection/split.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/gwys_split_pool.py"


# K rollouts per pool sample by the chosen policy (gwys.rollouts.policy: sft | base).
rule gwys_rollouts:
    input:
        records=gwys("selection", "pool", "shard{shard}.parquet"),
        policy=gwys_rollout_policy(),
        media=gwys_folder_input(GWYS["pool"]["media_root"]),
        prompts=gwys_prompt_files(),
    output:
        kept=gwys("selection", "rollouts", "shard{shard}.parquet"),
        rejects=gwys("selection", "rollouts", "shard{shard}.rejects.parquet"),
        counts=gwys("selection", "rollouts", "shard{shard}.counts.json"),
    params:
        settings=GWYS["rollouts"]["settings"],
        generation=gwys_policy_generation(gwys_rollout_policy()),
        media_root=GWYS["pool"]["media_root"],
        prompts=GWYS["prompts"],
        chunk_size=GWYS["rollouts"]["chunk_size"],
        progress_dir=gwys(".progress", "rollouts", "shard{shard}"),
    log:
        "logs/gwys/selection/rollouts/shard{shard}.log",
    benchmark:
        "benchmarks/gwys/selection/rollouts/shard{shard}.tsv"
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/gwys_rollouts.py"


rule gwys_select:
    input:
        rollouts=[gwys("selection", "rollouts", f"shard{shard}.parquet") for shard in GWYS_ROLLOUT_SHARDS],
        pool=gwys("data", "pool.parquet"),
    output:
        table=gwys("selection", "table.parquet"),
        train_pool=gwys("selection", "train_pool.parquet"),
        summary=gwys("selection", "summary.json"),
    params:
        selection=GWYS["selection"],
    log:
        "logs/gwys/selection/select.log",
    benchmark:
        "benchmarks/gwys/selection/select.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/gwys_select.py"


rule plot_gwys_selection:
    input:
        table=gwys("selection", "table.parquet"),
    output:
        plot=report(
            gwys("plots", "selection.png"),
            caption="../workflow/report/gwys_selection.rst",
            category="GWYS",
            labels={"figure": "reward-variance selection"},
        ),
    params:
        selection=GWYS["selection"],
    log:
        "logs/gwys/plots/selection.log",
    benchmark:
        "benchmarks/gwys/plots/selection.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_gwys_selection.py"


def gwys_model_input(name):
    """What a row's evaluation needs built first (nothing for a hub id)."""
    return model_input("gwys_policy") if name == "base" else gwys_model_dir(name)


# One job per model over every eval set: the model is loaded once (greedy decoding, its own form).
rule gwys_eval:
    input:
        sets=[gwys("data", f"{name}.parquet") for name in GWYS_EVAL_SETS],
        model=lambda wildcards: gwys_model_input(wildcards.gwys_model),
        media=[gwys_folder_input(d["media_root"]) for d in GWYS_EVAL_SETS.values()],
        prompts=gwys_prompt_files(),
    output:
        predictions=gwys("eval", "{gwys_model}", "predictions.parquet"),
        rejects=gwys("eval", "{gwys_model}", "rejects.parquet"),
        scores=gwys("eval", "{gwys_model}", "scores.json"),
    params:
        model=lambda wildcards: wildcards.gwys_model,
        form=lambda wildcards: gwys_model_form(wildcards.gwys_model),
        generation=lambda wildcards: gwys_policy_generation(gwys_model_dir(wildcards.gwys_model)),
        sets=[{"name": name, "media_root": d["media_root"]} for name, d in GWYS_EVAL_SETS.items()],
        max_new_tokens=GWYS["eval"]["max_new_tokens"],
        rules=GWYS["eval"]["rules"],
        prompts=GWYS["prompts"],
        chunk_size=GWYS["eval"]["chunk_size"],
        progress_dir=lambda wildcards: gwys(".progress", "eval", wildcards.gwys_model),
    log:
        "logs/gwys/eval/{gwys_model}.log",
    benchmark:
        "benchmarks/gwys/eval/{gwys_model}.tsv"
    threads: job_threads("infer_job")
    resources:
        **job_resources("infer_job"),
    script:
        "../workflow/scripts/gwys_eval.py"


rule gwys_eval_table:
    input:
        scores=[gwys("eval", name, "scores.json") for name in GWYS_MODELS],
    output:
        table=gwys("eval", "table.tsv"),
        markdown=gwys("eval", "table.md"),
    params:
        rows=GWYS_MODELS,
        sets=list(GWYS_EVAL_SETS),
    log:
        "logs/gwys/eval/table.log",
    benchmark:
        "benchmarks/gwys/eval/table.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/gwys_eval_table.py"


def gwys_variant_start(variant):
    """A variant's start (and KL reference): the base policy or the cold-start SFT checkpoint."""
    return gwys_model_input("base") if GWYS_VARIANTS[variant]["start"] == "base" else gwys_model_dir("sft")


def gwys_variant_pool(variant):
    """The selected pool (reward-variance selection) or, for an ablation without it, the whole pool."""
    return gwys("selection", "train_pool.parquet") if GWYS_VARIANTS[variant]["selection"] else gwys("data", "pool.parquet")


def gwys_variant_settings(variant):
    """gwys.grpo with the variant's own conflict switch and settings over it."""
    entry = GWYS_VARIANTS[variant]
    settings = {**GWYS["grpo"], **(entry.get("grpo") or {})}
    settings["conflict"] = {**(settings.get("conflict") or {}), "enabled": bool(entry["conflict"])}
    return settings


def gwys_grpo_judge(variant):
    """The caption judge of a variant with the caption reward: gwys.judge, its generator on
    models.gwys_judge (None: the variant has no caption reward)."""
    if "caption" not in GWYS_VARIANTS[variant]["rewards"]:
        return None
    judge = {k: v for k, v in GWYS["judge"].items() if k != "generation"}
    return {**judge, "generator": {**GWYS["judge"]["generation"], "model": config["models"]["gwys_judge"]}}


def gwys_grpo_prompts(variant):
    """A user's prompt files for a variant's run: its form's question prompt, the type
    instructions and the judge's texts (None: ours)."""
    prompts = GWYS["prompts"]
    return {"question": prompts[GWYS_VARIANTS[variant]["form"]], "type_instructions": prompts["types"],
            "judge_user": prompts["judge_user"], "judge_system": prompts["judge_system"]}


def gwys_judge_input(variant):
    """The judge's local model when a variant asks it and it runs here (hf), else nothing."""
    if "caption" not in GWYS_VARIANTS[variant]["rewards"] or GWYS["judge"]["generation"]["backend"] != "hf":
        return []
    return model_input("gwys_judge")


rule gwys_grpo:
    input:
        pool=lambda wildcards: gwys_variant_pool(wildcards.gwys_variant),
        start=lambda wildcards: gwys_variant_start(wildcards.gwys_variant),
        judge=lambda wildcards: gwys_judge_input(wildcards.gwys_variant),
        media=gwys_folder_input(GWYS["pool"]["media_root"]),
        prompts=gwys_prompt_files(),
    output:
        model=directory(gwys("grpo", "{gwys_variant}", "model")),
        summary=gwys("grpo", "{gwys_variant}", "train_summary.json"),
    params:
        model=config["models"]["gwys_policy"],
        media_root=GWYS["pool"]["media_root"],
        settings=lambda wildcards: gwys_variant_settings(wildcards.gwys_variant),
        form=lambda wildcards: GWYS_VARIANTS[wildcards.gwys_variant]["form"],
        rewards=lambda wildcards: GWYS_VARIANTS[wildcards.gwys_variant]["rewards"],
        judge=lambda wildcards: gwys_grpo_judge(wildcards.gwys_variant),
        prompts=lambda wildcards: gwys_grpo_prompts(wildcards.gwys_variant),
    log:
        "logs/gwys/grpo/{gwys_variant}.log",
    benchmark:
        "benchmarks/gwys/grpo/{gwys_variant}.tsv"
    threads: job_threads("train_job")
    resources:
        **job_resources("train_job"),
    script:
        "../workflow/scripts/gwys_grpo.py"


rule plot_gwys_training:
    input:
        summaries=[gwys("grpo", v, "train_summary.json") for v in GWYS_VARIANTS],
    output:
        plot=report(
            gwys("plots", "training.png"),
            caption="../workflow/report/gwys_training.rst",
            category="GWYS",
            labels={"figure": "GRPO curves"},
        ),
    params:
        variants=list(GWYS_VARIANTS),
    log:
        "logs/gwys/plots/training.log",
    benchmark:
        "benchmarks/gwys/plots/training.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_gwys_training.py"


rule plot_gwys_eval:
    input:
        scores=[gwys("eval", name, "scores.json") for name in GWYS_MODELS],
    output:
        plot=report(
            gwys("plots", "eval.png"),
            caption="../workflow/report/gwys_eval.rst",
            category="GWYS",
            labels={"figure": "accuracy per model"},
        ),
    params:
        rows=GWYS_MODELS,
    log:
        "logs/gwys/plots/eval.log",
    benchmark:
        "benchmarks/gwys/plots/eval.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_gwys_eval.py"


GWYS_TABLES = ["pool", *GWYS_EVAL_SETS]


rule gwys_counts:
    input:
        sft_counts=gwys("data", "sft.counts.json"),
        sft_rejects=gwys("data", "sft.rejects.parquet"),
        table_counts=[gwys("data", f"{name}.counts.json") for name in GWYS_TABLES],
        table_rejects=[gwys("data", f"{name}.rejects.parquet") for name in GWYS_TABLES],
        rollout_counts=[gwys("selection", "rollouts", f"shard{shard}.counts.json") for shard in GWYS_ROLLOUT_SHARDS],
        rollout_rejects=[gwys("selection", "rollouts", f"shard{shard}.rejects.parquet") for shard in GWYS_ROLLOUT_SHARDS],
        summaries=[gwys("grpo", v, "train_summary.json") for v in GWYS_VARIANTS],
    output:
        counts=gwys("stage_counts.tsv"),
        rejects=gwys("rejects.parquet"),
    params:
        tables=GWYS_TABLES,
        variants=list(GWYS_VARIANTS),
    log:
        "logs/gwys/counts.log",
    benchmark:
        "benchmarks/gwys/counts.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/gwys_counts.py"
