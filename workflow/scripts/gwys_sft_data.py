"""GWYS cold-start SFT data: LLaVA-CoT records (or the converted form) into four-tag LLaVA-format
records for the shared SFT trainer; every bad record to the rejects with its line and reason."""
from groundflow.gwys.data import load_sft_records, write_sft_records
from groundflow.gwys.prompts import load_question_prompts
from groundflow.io.artifacts import atomic_write_json, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0] if snakemake.log else None)
params = snakemake.params
result = load_sft_records(snakemake.input.records, image_root=params.image_root,  # a user's folder: read as it is
                          prompts=load_question_prompts("four_tag", params.get("prompt")))
write_table(result.rejects, snakemake.output.rejects, schema=table_schema("rejects"))
write_sft_records(result.records, snakemake.output.records)
atomic_write_json(snakemake.output.counts, result.counts)
counts = result.counts
log.info("gwys SFT data from %s: in %d = out %d + rejected %d", counts["path"], counts["in"], counts["out"], counts["rejected"])
for record_id, reason in zip(result.rejects["id"], result.rejects["reason"]):
    log.info("rejected %s: %s", record_id, reason)
