"""Score every dataset x checkpoint x setting with the dataset's metrics; the long table and its pivot."""
import json
from pathlib import Path

import pandas as pd

from groundflow.cings.inference import job_runs, resolve_dataset
from groundflow.cings.scoring import evaluation_table, readable_table
from groundflow.io.artifacts import atomic_write_text, read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
datasets = {d.name: d for d in (resolve_dataset(entry)
                                for entry in snakemake.params.datasets)}
jobs = list(zip(snakemake.params.runs, snakemake.input.predictions, snakemake.input.rejects, snakemake.input.counts,
                strict=True))
frames, runs = [], []
for (dataset, mode), predictions_path, rejects_path, counts_path in jobs:
    predictions = read_table(predictions_path)
    runs.append(job_runs(datasets[dataset], mode, predictions, read_table(rejects_path),
                         json.loads(Path(counts_path).read_text())))
    frames.append(predictions.assign(dataset=dataset, mode=mode))
for counts_path in snakemake.input.record_counts:
    counts = json.loads(Path(counts_path).read_text())
    log.info("%s: %d records, %d valid, %d rejected", counts["source"], counts["in"], counts["out"], counts["rejected"])
scored, table = evaluation_table(pd.concat(frames, ignore_index=True), pd.concat(runs, ignore_index=True),
                                 {name: d.scoring for name, d in datasets.items()},
                                 use_stemmer=snakemake.params.scoring["rouge_stemmer"])
write_table(scored, snakemake.output.scores, schema=table_schema("cings_eval_scores"))
write_table(table, snakemake.output.table, schema=table_schema("cings_eval_table"))
atomic_write_text(snakemake.output.tsv, readable_table(table).to_csv(sep="\t", index=False, float_format="%.4f"))
log.info("CINGS evaluation:\n%s", readable_table(table).to_string(index=False))
