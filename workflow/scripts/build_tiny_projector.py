"""Write the tiny stand-in of LLaVA-1.5's stage-1 mm_projector.bin (embedded default)."""
from groundflow.models.llava import build_tiny_projector
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0])
build_tiny_projector(snakemake.output[0], snakemake.params.lm, snakemake.params.vision, seed=snakemake.params.seed)
