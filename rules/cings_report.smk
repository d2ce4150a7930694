# CINGS in the Snakemake report (`snakemake --report report.html`): the evaluation table itself
# and a plot of it (and of the VL checkpoints' POPE scores), each a small CPU job.

CINGS_REPORT_CATEGORY = "CINGS"


def cings_plot(name):
    return results("cings", "plots", f"{name}.png")


def cings_report_targets():
    return [cings_plot("eval")] + ([cings_plot("pope")] if CINGS_POPE_MODES else [])


rule plot_cings_eval:
    input:
        table=cings_eval("table.parquet"),
    output:
        plot=report(cings_plot("eval"), caption="../workflow/report/cings_eval.rst",
                    category=CINGS_REPORT_CATEGORY, subcategory="1 Evaluation"),
    params:
        title="CINGS: every trained LM (mode) on every evaluation set and prompt setting",
    log:
        "logs/cings/plots/eval.log",
    benchmark:
        "benchmarks/cings/plots/eval.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_cings_eval.py"


rule plot_cings_pope:
    input:
        table=cings_pope("table.parquet"),
    output:
        plot=report(cings_plot("pope"), caption="../workflow/report/cings_pope.rst",
                    category=CINGS_REPORT_CATEGORY, subcategory="2 Hallucination"),
    params:
        title="POPE: object hallucination of the CINGS VL checkpoints",
    log:
        "logs/cings/plots/pope.log",
    benchmark:
        "benchmarks/cings/plots/pope.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/plot_cings_pope.py"
