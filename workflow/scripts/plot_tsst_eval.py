"""Report: TSST's evaluation table as bars, one panel per mode x metric, one bar per round."""
from groundflow.io.artifacts import read_table
from groundflow.pipeline import setup_logging
from groundflow.report.plots import plot_eval_table, save_figure
from groundflow.tsst.metrics import plot_rows

setup_logging(snakemake.log[0] if snakemake.log else None)
table = read_table(snakemake.input.table)
save_figure(plot_eval_table(plot_rows(table), group="round", title=snakemake.params.get("title", "TSST accuracy per round")),
            snakemake.output.plot)
