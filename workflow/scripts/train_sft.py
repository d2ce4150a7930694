"""Supervised fine-tuning (LLaVA format) of the configured model, resumable."""
from groundflow.pipeline import setup_logging, train_settings
from groundflow.train.launch import run_sft

setup_logging(snakemake.log[0])
run_sft(
    model=snakemake.params.model,
    records_path=snakemake.input.records,
    image_root=".",
    out_dir=snakemake.params.out_dir,
    train=train_settings(snakemake),
)
