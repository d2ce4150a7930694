"""Report: records kept and rejected per stage (data preparation, then trial learning)."""
import pandas as pd

from groundflow.pipeline import setup_logging
from groundflow.report.plots import plot_stage_counts, save_figure

setup_logging(snakemake.log[0])
counts = pd.concat([pd.read_csv(p, sep="\t") for p in snakemake.input.counts], ignore_index=True)
save_figure(plot_stage_counts(counts), snakemake.output.plot)
