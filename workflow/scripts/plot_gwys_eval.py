"""Report: GWYS' evaluation, one bar per model (base, SFT, every GRPO variant) per set and source."""
import json

from groundflow.pipeline import setup_logging
from groundflow.report.plots import gwys_eval_long_table, plot_eval_table, save_figure

setup_logging(snakemake.log[0] if snakemake.log else None)
paths = list(snakemake.input.scores)
models = list(snakemake.params.rows)
if len(paths) != len(models):
    raise ValueError(f"{len(paths)} scores files for the models {models}")
scores = {m: json.loads(open(p, encoding="utf-8").read()) for m, p in zip(models, paths)}
save_figure(plot_eval_table(gwys_eval_long_table(scores), group="model", title="GWYS accuracy per model"),
            snakemake.output.plot)
