"""Tokenise and label the converted records once per mode (the cache cings_train reads)."""
from groundflow.cings.labels import LabelSettings
from groundflow.cings.training import tokenize_for_training, write_tokenized
from groundflow.io.artifacts import atomic_write_json, read_table, write_table
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
labels = snakemake.params.labels
records = read_table(snakemake.input.table)
outputs = zip(snakemake.params.modes, snakemake.output.tables, snakemake.output.rejects, snakemake.output.counts)
for mode, table_path, rejects_path, counts_path in outputs:
    table, rejects, counts = tokenize_for_training(
        records,
        model_path=snakemake.params.model["path"],
        train=snakemake.params.train,
        settings=LabelSettings(mode, labels["mask_mode"], tuple(labels["unmask_tokens"])),
        system_prompt=snakemake.params.system_prompt,
        batch_size=snakemake.params.tokenize["batch_size"],
    )
    write_tokenized(table, table_path)
    write_table(rejects, rejects_path)
    atomic_write_json(counts_path, counts)
    log.info("tokenize %s: %s", mode, counts)
