"""Tokenise and label the converted records once per mode (the cache cings_train reads).

The tokenizer loads once; each mode is its own stage run (`StageJob`: chunks of
`tokenize.batch_size` records, accounting checked, table + rejects + counts written atomically,
its own log, and its own resume folder when `params.progress_dirs` names one per mode).
"""
from groundflow.cings.labels import LabelSettings
from groundflow.cings.training import check_tokenized, tokenize_steps_for_training
from groundflow.pipeline import StageJob, log, setup_logging

modes = list(snakemake.params.modes)
if len(snakemake.log) != len(modes):
    raise ValueError(f"cings_tokenize needs one log per mode of {modes}, got {list(snakemake.log)}")
# until the first mode's job takes over its log: a tokenizer that fails to load is logged there
setup_logging(snakemake.log[0])
labels = snakemake.params.labels
batch_size = snakemake.params.tokenize["batch_size"]
progress_dirs = snakemake.params.get("progress_dirs") or [None] * len(modes)
outputs = list(zip(modes, snakemake.output.tables, snakemake.output.rejects, snakemake.output.counts,
                   snakemake.log, progress_dirs, strict=True))
steps = tokenize_steps_for_training(
    model_path=snakemake.params.model["path"],
    train=snakemake.params.train,
    settings=[LabelSettings(mode, labels["mask_mode"], tuple(labels["unmask_tokens"])) for mode in modes],
    system_prompt=snakemake.params.system_prompt,
    batch_size=batch_size,
)
for step, (mode, table, rejects, counts, log_file, progress_dir) in zip(steps, outputs, strict=True):
    job = StageJob(step.stage, records=snakemake.input.table, kept=table, rejects=rejects, counts=counts,
                   progress_dir=progress_dir, log_file=log_file)
    job.run(step, produced_by=step.produced_by, chunk_size=batch_size)
    log.info("%s: %s", step.stage, check_tokenized(table, mode))
