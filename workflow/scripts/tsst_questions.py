"""Read one TSST question set (ScienceQA- or VCR-style file, optional id subset, a "start_end"
partition) into the question table; every bad line to the rejects with its line and reason."""
from groundflow.io.artifacts import atomic_write_json, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging
from groundflow.tsst.questions import load_questions, read_subset

setup_logging(snakemake.log[0])
params = snakemake.params
subset_file = snakemake.input.get("subset")
result = load_questions(
    snakemake.input.questions,
    kind=params.kind,
    image_root=params.image_root,  # a user's folder is no input (read as it is)
    partition=params.get("partition"),
    subset=read_subset(subset_file) if subset_file else None,
    source=params.get("source"),
)
write_table(result.rejects, snakemake.output.rejects, schema=table_schema("rejects"))
write_table(result.kept, snakemake.output.questions, schema=table_schema("tsst_questions"))
atomic_write_json(snakemake.output.counts, {**result.counts, "set": params.get("name")})
counts = result.counts
log.info("%s (%s, %s, partition %s): %d lines, %d selected: in %d = out %d + rejected %d",
         params.get("name"), counts["kind"], counts["path"], counts["partition"], counts["lines"], counts["selected"],
         counts["in"], counts["out"], counts["rejected"])
if counts["subset_missing"]:
    log.warning("%d subset ids are not in the file: %s", len(counts["subset_missing"]), counts["subset_missing"][:10])
for record_id, reason in zip(result.rejects["id"], result.rejects["reason"]):
    log.info("rejected %s: %s", record_id, reason)
