"""Turn the warm-up CoT file into the policy SFT JSON (correct chains) and the value JSON (one
record per reasoning prefix, the linear k/N rule); bad lines to the rejects with their reason."""
from pathlib import Path

from groundflow.io.artifacts import atomic_write_json, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging
from groundflow.tsst.prompts import load_question_prompts
from groundflow.tsst.warmup import warmup_from_file

setup_logging(snakemake.log[0])
prompt_files = snakemake.params.get("prompts") or {}
prompts = load_question_prompts(prompt_files.get("with_image"), prompt_files.get("text_only"))
image_root = snakemake.params.image_root
data = warmup_from_file(snakemake.input.cot, image_root=image_root, prompts=prompts,
                        cut=snakemake.params.get("cut") or "sentence")
# Every TSST training file names images as the training job opens them (from the run folder), so
# the warm-up and each round's records, from different image folders, can be trained on together.
for record in data.policy + data.value:
    if record.get("image"):
        record["image"] = str(Path(image_root) / record["image"])
write_table(data.rejects, snakemake.output.rejects, schema=table_schema("rejects"))
atomic_write_json(snakemake.output.policy, data.policy)
atomic_write_json(snakemake.output.value, data.value)
atomic_write_json(snakemake.output.counts, data.counts)
counts = data.counts
log.info("warm-up from %s: in %d = out %d + rejected %d; %d correct and %d incorrect chains -> "
         "%d policy records, %d value records (cut %s, prompt %s)", snakemake.input.cot, counts["in"], counts["out"],
         counts["rejected"], counts["correct_chains"], counts["incorrect_chains"], counts["policy_records"],
         counts["value_records"], counts["cut"], counts["prompt_version"])
for record_id, reason in zip(data.rejects["id"], data.rejects["reason"]):
    log.info("rejected %s: %s", record_id, reason)
