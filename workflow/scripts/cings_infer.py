"""Greedy answers of one trained checkpoint to one dataset's questions, in every prompt setting.

The model loads once (or its managed server starts once); each setting is its own stage run (own
predictions, rejects, counts, log and resume folder), so a table row traces back to exactly one file.
"""
from groundflow.cings.inference import INFER_STAGE, PROMPT_VERSION, infer_setting
from groundflow.generate.backends import SamplingParams, open_generator
from groundflow.pipeline import StageJob, log, setup_logging

setup_logging(snakemake.log[0])
opts = snakemake.params.opts
params = SamplingParams(max_new_tokens=opts["max_new_tokens"], n=1, do_sample=False)
options = {
    "ndocs": opts["ndocs"],
    "use_gold": opts["use_gold_docs"],
    "max_prompt_tokens": opts["max_prompt_tokens"],
    "system_prompt": snakemake.params.system_prompt,
}
outputs = list(zip(snakemake.params.settings, snakemake.output.kept, snakemake.output.rejects,
                   snakemake.output.counts, snakemake.log, snakemake.params.progress_dirs, strict=True))
# One server for all settings (the job has one log per setting, so the server's log is its own);
# it stops when the last setting is written.
with open_generator(snakemake.params.generation, kind="text", server_log=snakemake.params.server_log) as generator:
    for setting, kept, rejects, counts, log_file, progress_dir in outputs:
        job = StageJob(INFER_STAGE, records=snakemake.input.records, kept=kept, rejects=rejects, counts=counts,
                       progress_dir=progress_dir, log_file=log_file)
        log.info("setting %s with %s", setting, generator.describe())
        job.run(
            lambda records: infer_setting(records, generator, params, setting, **options),
            produced_by={"generator": generator.describe(), "sampling": params.describe(), "prompt": PROMPT_VERSION,
                         "setting": setting, **options},
            chunk_size=opts["chunk_size"],
        )
