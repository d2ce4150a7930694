"""Report: GWYS' GRPO curves (reward, KL, InfoNCE, each reward function) of every variant."""
import json

from groundflow.pipeline import setup_logging
from groundflow.report.plots import gwys_step_table, plot_gwys_training, save_figure

setup_logging(snakemake.log[0] if snakemake.log else None)
paths = list(snakemake.input.summaries)
variants = list(snakemake.params.variants)
if len(paths) != len(variants):
    raise ValueError(f"{len(paths)} training summaries for the variants {variants}")
summaries = {v: json.loads(open(p, encoding="utf-8").read()) for v, p in zip(variants, paths)}
save_figure(plot_gwys_training(gwys_step_table(summaries)), snakemake.output.plot)
