"""Read one KILT-style evaluation file; valid records to Parquet, the others to rejects with why."""
from pathlib import Path

from groundflow.cings.inference import parse_eval_text, validate_records
from groundflow.io.artifacts import atomic_write_json, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
path = Path(snakemake.params.path)
if not path.is_file():
    raise FileNotFoundError(
        f"evaluation file of dataset {snakemake.wildcards.dataset!r} not found: {path} "
        "(config cings.inference.datasets)"
    )
result = validate_records(parse_eval_text(path.read_text(encoding="utf-8"), source=str(path)))
write_table(result.rejects, snakemake.output.rejects, schema=table_schema("rejects"))
write_table(result.kept, snakemake.output.kept)
atomic_write_json(snakemake.output.counts, {**result.counts, "source": str(path)})
log.info("%s: in %d = out %d + rejected %d", path, result.counts["in"], result.counts["out"], result.counts["rejected"])
for record_id, reason in zip(result.rejects["id"], result.rejects["reason"]):
    log.info("rejected %s: %s", record_id, reason)
