"""LLaVA stage 2 on the CINGS LLaVA: LM + projector on visual instructions, through the shared trainer."""
from groundflow.cings.training import train_vl_stage
from groundflow.pipeline import setup_logging, train_settings

setup_logging(snakemake.log[0])
train_vl_stage(
    stage=2,
    base_model={"path": snakemake.input.model},
    records_path=snakemake.params.records["path"],
    image_folder=snakemake.params.records["image_folder"],
    train=train_settings(snakemake),
    out_dir=snakemake.params.out_dir,
    system_prompt=snakemake.params.system_prompt,
)
