"""Read one dataset's KILT-style evaluation file; valid records to Parquet, the others to rejects with why."""
from groundflow.cings.inference import read_eval_records, record_labels
from groundflow.io.artifacts import atomic_write_json, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
entry = snakemake.params.dataset  # what reading depends on: name, metrics, labels
source = snakemake.params.path
result = read_eval_records(source, name=entry["name"], labels=record_labels(entry))
write_table(result.rejects, snakemake.output.rejects, schema=table_schema("rejects"))
write_table(result.kept, snakemake.output.kept, schema=table_schema("cings_eval_records"))
atomic_write_json(snakemake.output.counts, {**result.counts, "dataset": entry["name"], "source": str(source)})
log.info("%s (%s): in %d = out %d + rejected %d", entry["name"], source,
         result.counts["in"], result.counts["out"], result.counts["rejected"])
for record_id, reason in zip(result.rejects["id"], result.rejects["reason"]):
    log.info("rejected %s: %s", record_id, reason)
