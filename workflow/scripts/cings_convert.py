"""Self-RAG records -> converted records (marker form), the original's filtered JSONL, rejects, counts."""
from groundflow.cings.training import convert_to_files
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0])
# params.records, not input.records: a missing user file is no input (the plan still works) and
# the job names it when it runs.
convert_to_files(
    snakemake.params.records,
    snakemake.params.opts,
    table=snakemake.output.table,
    filtered=snakemake.output.filtered,
    rejects_path=snakemake.output.rejects,
    counts_path=snakemake.output.counts,
)
