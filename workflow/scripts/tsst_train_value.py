"""Train the TSST value model (backbone + LayerNorm->Linear head, MSE at the closing EOS) on one
round's value JSON; it starts from a plain LLaVA (a fresh head from value.head_seed) or an earlier
round's value checkpoint (its head), and writes the merged value checkpoint."""
from groundflow.pipeline import setup_logging, train_settings
from groundflow.train.value import run_value
from groundflow.tsst.training import tsst_train_settings

setup_logging(snakemake.log[0])
# TSST training files name images as this job opens them, from the run folder (tsst_warmup_data,
# tsst_round_data), so that records from several image folders train together.
image_root = snakemake.params.get("image_root") or "."
model = dict(snakemake.params.model)
start = snakemake.input.get("start")
if start:  # an earlier round's value checkpoint (or a policy/base LLaVA), tracked as an input
    model["path"] = str(start)
run_value(
    model=model,
    records_path=snakemake.input.records,
    image_root=image_root,
    out_dir=snakemake.params.out_dir,
    train=tsst_train_settings(train_settings(snakemake)),
    value=snakemake.params.get("value"),
)
