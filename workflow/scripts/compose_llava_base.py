"""Compose CVC's training base (LLaVA-1.5's stage-1 state) in HF format from its three parts:
the language model, the CLIP vision tower and the pretrained mlp2x_gelu projector file."""
from groundflow.models.llava import compose_llava_base
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
base = compose_llava_base(
    lm=snakemake.params.lm,
    vision=snakemake.params.vision,
    projector_path=snakemake.params.projector,
    out_dir=snakemake.output[0],
)
log.info("composed %s", base)
