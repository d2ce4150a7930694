"""GWYS RL pool (or an evaluation set, which has the same form): Video-R1-style rows into the pool
table; types outside the configured ones, video rows unless enabled and every bad record to the
rejects with its line and reason."""
from groundflow.gwys.data import PoolSettings, load_pool, write_pool
from groundflow.io.artifacts import atomic_write_json, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0] if snakemake.log else None)
params = snakemake.params
settings = dict(params.get("settings") or {})
if "problem_types" in settings:
    settings["problem_types"] = tuple(settings["problem_types"])
result = load_pool(snakemake.input.rows, media_root=params.media_root, settings=PoolSettings(**settings))
write_table(result.rejects, snakemake.output.rejects, schema=table_schema("rejects"))
write_pool(result.kept, snakemake.output.pool)
atomic_write_json(snakemake.output.counts, {**result.counts, "set": params.get("name")})
counts = result.counts
log.info("gwys pool %s from %s: in %d = out %d + rejected %d, by type %s", params.get("name"), counts["path"],
         counts["in"], counts["out"], counts["rejected"], counts["by_type"])
for record_id, reason in zip(result.rejects["id"], result.rejects["reason"]):
    log.info("rejected %s: %s", record_id, reason)
