"""Greedy answers of one trained checkpoint to one dataset's questions, in every setting of that dataset.

The model loads once (or its managed server starts once); the job's units are the dataset's
records x its settings (`{id}|{setting}`, groundflow.cings.inference.setting_requests), so one
predictions table, one rejects table and one counts file hold every setting, and the accounting
in = out + rejected is checked once for the job.
"""
from groundflow.cings.inference import (INFER_STAGE, PROMPT_VERSION, infer_requests, load_instruction,
                                        prediction_frame, resolve_dataset, setting_requests)
from groundflow.generate.backends import SamplingParams, open_generator
from groundflow.io.artifacts import read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import StageJob, log, setup_logging

setup_logging(snakemake.log[0])
opts = snakemake.params.opts
dataset = resolve_dataset(snakemake.params.dataset)  # its settings and ndocs resolved by the rule
instruction = load_instruction(dataset.prompt, opts.get("sentence_completion_prompt"))
params = SamplingParams(max_new_tokens=opts["max_new_tokens"], n=1, do_sample=False)
options = {
    "ndocs": dataset.ndocs,
    "use_gold": opts["use_gold_docs"],
    "max_prompt_tokens": opts["max_prompt_tokens"],
    "system_prompt": snakemake.params.system_prompt,
    "prompt": dataset.prompt,
    "instruction": instruction.text if instruction is not None else None,
}
job = StageJob(INFER_STAGE, records=snakemake.input.records, kept=snakemake.output.kept,
               rejects=snakemake.output.rejects, counts=snakemake.output.counts,
               progress_dir=snakemake.params.progress_dir, log_file=snakemake.log[0])
with open_generator(snakemake.params.generation, kind="text", server_log=snakemake.params.server_log) as generator:
    log.info("%s in settings %s with %s", dataset.name, list(dataset.settings), generator.describe())
    job.run(
        lambda requests: infer_requests(requests, generator, params, **options),
        units=lambda records: setting_requests(records, dataset.settings),
        produced_by={"generator": generator.describe(), "sampling": params.describe(), "prompt": PROMPT_VERSION,
                     "dataset": dataset.name, "prompt_kind": dataset.prompt, "settings": list(dataset.settings),
                     "instruction": instruction.version if instruction is not None else None,
                     **{k: v for k, v in options.items() if k != "instruction"}},
        chunk_size=opts["chunk_size"],
    )
# StageJob writes without a schema: the table is rewritten in its declared one (an all-rejected
# job's empty table has the records' columns until then)
write_table(prediction_frame(read_table(snakemake.output.kept)), snakemake.output.kept,
            schema=table_schema("cings_eval_predictions"))
