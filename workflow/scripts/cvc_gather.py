"""Concatenate the shards into instances.parquet, all rejects, and per-stage counts."""
from groundflow.cvc.tables import gather
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0])
gather(
    instance_paths=list(snakemake.input.instances),
    reject_paths=list(snakemake.input.rejects),
    count_paths=list(snakemake.input.counts),
    instances_out=snakemake.output.instances,
    rejects_out=snakemake.output.rejects,
    counts_out=snakemake.output.counts,
)
