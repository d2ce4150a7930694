"""Per-step counts (convert, tokenize and train per mode) and every reject, in one table each."""
from groundflow.cings.training import gather_counts
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0])
gather_counts(
    convert_counts=snakemake.input.convert,
    convert_rejects=snakemake.input.convert_rejects,
    tokenize_counts=list(snakemake.input.tokenize),
    tokenize_rejects=list(snakemake.input.tokenize_rejects),
    summaries=dict(zip(snakemake.params.modes, snakemake.input.summaries, strict=True)),
    counts_out=snakemake.output.counts,
    rejects_out=snakemake.output.rejects,
)
