"""GWYS cold-start SFT (spec §3): the four-tag LLaVA-format records (gwys_sft_data) through the
shared trainer, on Qwen2.5-VL in full or with LoRA, resumable; GWYS' label mask unless configured."""
from groundflow.gwys.sft import gwys_sft_settings
from groundflow.pipeline import setup_logging, train_settings
from groundflow.train.launch import run_sft

setup_logging(snakemake.log[0])
run_sft(
    model=dict(snakemake.params.model),
    records_path=snakemake.input.records,
    image_root=snakemake.params.image_root,  # the folder the records' image paths are relative to
    out_dir=snakemake.params.out_dir,
    train=gwys_sft_settings(train_settings(snakemake)),
)
