"""The CVC probe of one checkpoint: each held-out occluded object asked as the hybrid data's answer
samples ask it (greedy), then checked with trial learning's answer check (embedder similarity with
the label above the threshold); the generator is freed before the embedder loads."""
from pathlib import Path

from groundflow.cvc.probe import run_probe_eval
from groundflow.models.spec import offline_hub
from groundflow.pipeline import setup_logging

log_file = snakemake.log[0] if snakemake.log else None
setup_logging(log_file)
offline_hub()
probe = snakemake.input.probe
run_probe_eval(
    probe_paths=[probe] if isinstance(probe, str) else list(probe),
    generation=snakemake.params.generation,
    embedder=snakemake.params.embedder,
    opts=snakemake.params.opts,
    image_dir=snakemake.params.image_dir,
    result_out=snakemake.output.result,
    answers_out=snakemake.output.answers,
    progress_dir=snakemake.params.get("progress_dir"),
    server_log=str(Path(log_file).with_suffix(".server.log")) if log_file else None,
)
