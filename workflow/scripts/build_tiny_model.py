"""Build one tiny random model of a real architecture into its folder (embedded default)."""
from groundflow.demo import build_demo_model
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0])
build_demo_model(snakemake.wildcards.kind, snakemake.output[0], seed=snakemake.params.seed)
