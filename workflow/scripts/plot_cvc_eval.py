"""Report: CVC's evaluation, one panel per benchmark (its headline metric, own scale), a bar per checkpoint."""
import pandas as pd

from groundflow.evaluate.comparison import long_table
from groundflow.pipeline import setup_logging
from groundflow.report.plots import plot_eval_table, save_figure

setup_logging(snakemake.log[0] if snakemake.log else None)
table = pd.read_csv(snakemake.input.table, sep="\t", keep_default_na=False, na_values=[""])
models = list(snakemake.params.checkpoints)
save_figure(plot_eval_table(long_table(table, models), group="model", title="CVC: base vs trained", ylim=None),
            snakemake.output.plot)
