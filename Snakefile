# groundflow: one reproducible DAG for grounded, knowledge-intensive VLM training.
# `snakemake --cores N` runs the embedded default (config.yaml); presets live in configs/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/models.smk"


# A method's rules exist when the config has its section (the schema requires the section of every
# method in `methods`), so a preset of one method is a whole config without the others' keys.
# This is the one switch: the rule files of a method assume its section is there.
if "cvc" in config:

    include: "rules/cvc_data.smk"
    include: "rules/cvc_trials.smk"
    include: "rules/report.smk"
    include: "rules/cvc_eval.smk"

    rule cvc_prep:
        input:
            cvc_targets() + cvc_data_plots(),

    rule cvc_all:
        input:
            cvc_targets() + cvc_training_targets() + cvc_report_targets() + cvc_eval_targets(),


if "cings" in config:

    include: "rules/cings.smk"
    include: "rules/cings_eval.smk"
    include: "rules/cings_report.smk"

    rule cings:
        input:
            cings_targets() + cings_eval_targets() + cings_pope_targets() + cings_report_targets(),


if "tsst" in config:

    include: "rules/tsst.smk"
    include: "rules/tsst_eval.smk"

    rule tsst:
        input:
            tsst_targets() + tsst_eval_targets() + tsst_report_targets(),


if "gwys" in config:

    include: "rules/gwys.smk"

    rule gwys:
        input:
            gwys_targets() + gwys_report_targets(),


rule all:
    input:
        all_targets(),
    default_target: True
