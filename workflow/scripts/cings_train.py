"""Train the CINGS LM on one mode's tokenised records through the shared trainer (resumable)."""
from groundflow.cings.training import train_mode
from groundflow.pipeline import setup_logging, train_settings

setup_logging(snakemake.log[0])
train_mode(
    tokenized_path=snakemake.input.table,
    tokenize_counts_path=snakemake.input.counts,
    model=snakemake.params.model,
    train=train_settings(snakemake),
    out_dir=snakemake.params.out_dir,
)
