"""Report: correct trials per instance, with the band whose rationales become CoT samples."""
import logging

from groundflow.pipeline import setup_logging
from groundflow.report.plots import correct_of_n, plot_trial_success, save_figure
from groundflow.io.artifacts import concat_tables

setup_logging(snakemake.log[0])
n_correct, n_trials = correct_of_n(concat_tables(snakemake.input.checked, ["id", "correct", "n_correct"]))
logging.info("correct of %d per instance:\n%s", n_trials, n_correct.value_counts().sort_index().to_string())
save_figure(plot_trial_success(n_correct, n_trials=n_trials, cot_range=(snakemake.params.cot_min, snakemake.params.cot_max)),
            snakemake.output.plot)
