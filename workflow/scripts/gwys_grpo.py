"""GWYS GRPO (baseline or "ours"): TRL's GRPOTrainer on the RL pool from the start model (the base,
or the cold-start SFT checkpoint, which is also the KL reference), with the configured rewards and
conflict term; writes the trained model and its train_summary.json into one folder. With
`accelerate_config` among the settings, the training runs under `accelerate launch`."""
from pathlib import Path

from groundflow.gwys.grpo import SUMMARY, run_grpo
from groundflow.models.spec import offline_hub
from groundflow.pipeline import setup_logging
from groundflow.train.launch import WORKFLOW_DIR

setup_logging(snakemake.log[0])
offline_hub()
out_dir = Path(snakemake.output.model).parent
if Path(snakemake.output.summary) != out_dir / SUMMARY:
    raise ValueError(f"output.summary must be {out_dir / SUMMARY} (beside output.model), not {snakemake.output.summary}")
model = dict(snakemake.params.model)
model["path"] = str(snakemake.input.start)  # the start model is tracked as an input
reference = snakemake.params.get("reference")
if snakemake.input.get("reference"):  # a KL reference other than the start model, tracked as an input
    reference = {**dict(reference or model), "path": str(snakemake.input.reference)}
# A relative launch file is looked up in the run folder, then in this checkout (not a param: moving
# the checkout must not re-run training), as the shared trainer's jobs do (pipeline.train_settings).
settings = {**dict(snakemake.params.settings), WORKFLOW_DIR: str(Path(snakemake.scriptdir).resolve().parents[1])}
run_grpo(
    model=model,
    reference=reference,
    pool_path=snakemake.input.pool,
    media_root=snakemake.input.get("media_root") or snakemake.params.get("media_root"),
    out_dir=out_dir,
    settings=settings,
    form=snakemake.params.form,
    rewards=list(snakemake.params.rewards),
    judge=snakemake.params.get("judge"),
    prompts=snakemake.params.get("prompts"),
)
