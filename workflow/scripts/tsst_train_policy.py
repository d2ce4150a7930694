"""Train the TSST policy (LLaVA, LoRA on the language model, assistant span + EOS in the loss) on
one round's LLaVA JSON through the shared trainer, from the base model or an earlier round's policy."""
from groundflow.pipeline import setup_logging, train_settings
from groundflow.train.launch import run_sft
from groundflow.tsst.training import tsst_train_settings

setup_logging(snakemake.log[0])
# TSST training files name images as this job opens them, from the run folder (tsst_warmup_data,
# tsst_round_data), so that records from several image folders train together.
image_root = snakemake.params.get("image_root") or "."
model = dict(snakemake.params.model)
start = snakemake.input.get("start")
if start:  # an earlier round's merged checkpoint, tracked as an input
    model["path"] = str(start)
run_sft(
    model=model,
    records_path=snakemake.input.records,
    image_root=image_root,
    out_dir=snakemake.params.out_dir,
    train=tsst_train_settings(train_settings(snakemake)),
)
