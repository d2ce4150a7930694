"""GWYS' per-stage counts and every reject, in one table each (read by `groundflow status`)."""
from groundflow.gwys.counts import gather_counts
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0])
stages = {"sft_data": ([snakemake.input.sft_counts], [snakemake.input.sft_rejects])}
for name, counts, rejects in zip(snakemake.params.tables, snakemake.input.table_counts, snakemake.input.table_rejects,
                                 strict=True):
    stages[name] = ([counts], [rejects])
stages["rollouts"] = (list(snakemake.input.rollout_counts), list(snakemake.input.rollout_rejects))
gather_counts(stages=stages, summaries=dict(zip(snakemake.params.variants, snakemake.input.summaries, strict=True)),
              counts_out=snakemake.output.counts, rejects_out=snakemake.output.rejects)
