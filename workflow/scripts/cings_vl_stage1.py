"""LLaVA on the trained CINGS LM (CLIP tower + new mlp2x_gelu projector), then stage 1: the
projector alone on captions, through the shared trainer."""
from groundflow.cings.training import train_vl_stage
from groundflow.models.llava import compose_llava
from groundflow.pipeline import log, setup_logging, train_settings

setup_logging(snakemake.log[0])
base = compose_llava(
    snakemake.input.lm,
    snakemake.params.vision["path"],
    snakemake.output.base,
    vision_feature_layer=snakemake.params.vision_feature_layer,
    seed=snakemake.params.seed,
)
log.info("composed %s", base)
train_vl_stage(
    stage=1,
    base_model={"path": str(base)},
    records_path=snakemake.params.records["path"],
    image_folder=snakemake.params.records["image_folder"],
    train=train_settings(snakemake),
    out_dir=snakemake.params.out_dir,
)
