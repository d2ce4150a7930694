"""Report: the CINGS evaluation table as bars, one panel per dataset x metric."""
from groundflow.io.artifacts import read_table
from groundflow.pipeline import setup_logging
from groundflow.report.plots import plot_eval_table, save_figure

setup_logging(snakemake.log[0])
table = read_table(snakemake.input.table)
save_figure(plot_eval_table(table, group="mode", title=snakemake.params.title), snakemake.output.plot)
