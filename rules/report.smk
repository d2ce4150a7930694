# Report plots: one small CPU job per plot, reading the stage artifacts, each marked for
# `snakemake --report report.html` with its caption (workflow/report/*.rst; caption paths are
# relative to this file, as Snakemake resolves them from the rule file's folder).

REPORT_CATEGORY = "CVC"


def cvc_plot(name):
    return cvc("plots", f"{name}.png")


def cvc_caption(name):
    return f"../workflow/report/{name}.rst"


def cvc_data_plots():
    return [cvc_plot(n) for n in ["entities_per_caption", "causality_ppl", "box_scores", "occluded_examples"]]


def cvc_report_targets():
    return [cvc_plot(n) for n in ["stage_counts", "trial_success", "train_loss"]] + cvc_data_plots()


def plot_log(name):
    return f"logs/cvc/plots/{name}.log"


def plot_benchmark(name):
    return f"benchmarks/cvc/plots/{name}.tsv"


rule plot_cvc_stage_counts:
    input:
        counts=[cvc("stage_counts.tsv"), cvc("trial_stage_counts.tsv")],
    output:
        plot=report(cvc_plot("stage_counts"), caption=cvc_caption("stage_counts"),
                    category=REPORT_CATEGORY, subcategory="1 Overview"),
    log:
        plot_log("stage_counts"),
    benchmark:
        plot_benchmark("stage_counts")
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_stage_counts.py"


rule plot_cvc_entities:
    input:
        captions=expand(stage_records("images"), shard=SHARDS),
        entities=expand(stage_records("entities"), shard=SHARDS),
    output:
        plot=report(cvc_plot("entities_per_caption"), caption=cvc_caption("entities_per_caption"),
                    category=REPORT_CATEGORY, subcategory="2 Data preparation"),
    params:
        max_entities=CVC["entities"]["max_entities"],
    log:
        plot_log("entities_per_caption"),
    benchmark:
        plot_benchmark("entities_per_caption")
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_entities.py"


rule plot_cvc_causality:
    input:
        kept=expand(stage_records("causality"), shard=SHARDS),
        rejects=expand(cvc("causality", "{shard}.rejects.parquet"), shard=SHARDS),
    output:
        plot=report(cvc_plot("causality_ppl"), caption=cvc_caption("causality_ppl"),
                    category=REPORT_CATEGORY, subcategory="2 Data preparation"),
    params:
        ppl_low=CVC["causality"]["ppl_low"],
        ppl_high=CVC["causality"]["ppl_high"],
    log:
        plot_log("causality_ppl"),
    benchmark:
        plot_benchmark("causality_ppl")
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_causality.py"


rule plot_cvc_box_scores:
    input:
        kept=expand(stage_records("grounding"), shard=SHARDS),
        rejects=expand(cvc("grounding", "{shard}.rejects.parquet"), shard=SHARDS),
    output:
        plot=report(cvc_plot("box_scores"), caption=cvc_caption("box_scores"),
                    category=REPORT_CATEGORY, subcategory="2 Data preparation"),
    params:
        threshold=CVC["grounding"]["glip_threshold" if CVC["grounding"]["backend"] == "glip" else "dino_box_threshold"],
        backend=CVC["grounding"]["backend"],
    log:
        plot_log("box_scores"),
    benchmark:
        plot_benchmark("box_scores")
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_box_scores.py"


rule plot_cvc_occluded:
    input:
        instances=cvc("instances.parquet"),
        images=expand(cvc("occluded", "{shard}"), shard=SHARDS),
    output:
        plot=report(cvc_plot("occluded_examples"), caption=cvc_caption("occluded_examples"),
                    category=REPORT_CATEGORY, subcategory="2 Data preparation"),
    params:
        n_examples=8,
        image_dir=cvc(),
    log:
        plot_log("occluded_examples"),
    benchmark:
        plot_benchmark("occluded_examples")
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_occluded.py"


rule plot_cvc_trials:
    input:
        checked=expand(stage_records("checking"), shard=SHARDS),
    output:
        plot=report(cvc_plot("trial_success"), caption=cvc_caption("trial_success"),
                    category=REPORT_CATEGORY, subcategory="3 Trial learning"),
    params:
        cot_min=CVC["selection"]["cot_min"],
        cot_max=CVC["selection"]["cot_max"],
        threshold=CVC["checking"]["threshold"],
    log:
        plot_log("trial_success"),
    benchmark:
        plot_benchmark("trial_success")
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_trials.py"


rule plot_cvc_train_loss:
    input:
        summary=cvc("train", "train_summary.json"),
    output:
        plot=report(cvc_plot("train_loss"), caption=cvc_caption("train_loss"),
                    category=REPORT_CATEGORY, subcategory="4 Training"),
    params:
        train=CVC["train"],
    log:
        plot_log("train_loss"),
    benchmark:
        plot_benchmark("train_loss")
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_train_loss.py"
