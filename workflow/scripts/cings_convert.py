"""Self-RAG records -> converted records (marker form), the original's filtered JSONL, rejects, counts."""
from groundflow.cings.training import convert_records, write_converted
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
opts = snakemake.params.opts
frame, rejects, counts = convert_records(
    snakemake.params.records,
    variant=opts["variant"],
    keep_no_retrieval=opts["keep_no_retrieval"],
    input_separator=opts["input_separator"],
)
write_converted(
    frame, rejects, counts,
    table=snakemake.output.table, filtered=snakemake.output.filtered,
    rejects_path=snakemake.output.rejects, counts_path=snakemake.output.counts,
)
log.info("convert: %s", counts)
