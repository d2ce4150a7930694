"""Read the captions, reject bad records, split the rest into shards by image."""
from groundflow.cvc.tables import ingest_to_shards
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0])
ingest_to_shards(
    snakemake.params.captions,
    snakemake.params.image_root,
    shard_paths=list(snakemake.output.shards),
    rejects_path=snakemake.output.rejects,
    counts_path=snakemake.output.counts,
)
