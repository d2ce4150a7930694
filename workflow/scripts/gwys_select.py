"""Reward-variance selection: the rollouts' rewards (one table per shard) classed Hard / Easy / Medium
by the configured thresholds, Medium ranked by variance and its top keep_frac kept; writes the
selection table of every sample, the kept pool rows (the GRPO pool) and a summary."""
import pandas as pd

from groundflow.gwys.data import write_pool
from groundflow.gwys.rollouts import select_pool
from groundflow.gwys.selection import SelectionSettings
from groundflow.io.artifacts import atomic_write_json, read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0] if snakemake.log else None)
rollout_files = snakemake.input.rollouts
rollout_files = [rollout_files] if isinstance(rollout_files, str) else list(rollout_files)  # one file or a shard list
rollouts = pd.concat([read_table(path) for path in rollout_files], ignore_index=True)
selection = select_pool(read_table(snakemake.input.pool), rollouts, SelectionSettings(**snakemake.params.selection))
write_table(selection.table, snakemake.output.table, schema=table_schema("gwys_selection"))
write_pool(selection.train_pool, snakemake.output.train_pool)
atomic_write_json(snakemake.output.summary, {**selection.summary, "rollout_files": rollout_files})
summary = selection.summary
log.info("gwys selection: %d of %d pool samples rolled out; classes %s; %d kept for GRPO (mean reward %.3f)",
         summary["rolled_out"], summary["pool"], summary["by_class"], summary["kept"], summary["mean_reward"])
if summary["identical_groups"]:
    log.warning("%d samples had identical completions in every rollout", summary["identical_groups"])
