"""Selection and hybrid formatting: CoT + answer samples mixed into the instruction data."""
from groundflow.cvc.tables import build_hybrid
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0])
opts = snakemake.params.opts
build_hybrid(
    checked_paths=list(snakemake.input.checked),
    instruction_data=snakemake.params.instruction_data,
    occluded_prefix=snakemake.params.occluded_prefix,
    cot_range=(opts["cot_min"], opts["cot_max"]),
    shuffle_seed=snakemake.params.seed if opts["shuffle"] else None,
    reject_paths=list(snakemake.input.rejects),
    count_paths=list(snakemake.input.counts),
    llava_json_out=snakemake.output.llava_json,
    parquet_out=snakemake.output.parquet,
    counts_out=snakemake.output.counts,
    rejects_out=snakemake.output.rejects,
)
