"""Build one tiny random model of a real architecture into its folder (embedded default)."""
from groundflow.models.tiny import build_tiny_model
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0])
build_tiny_model(snakemake.wildcards.kind, snakemake.output[0], seed=snakemake.params.seed)
