"""Score every checkpoint x setting x dataset and write the comparison table."""
import json
from pathlib import Path

import pandas as pd

from groundflow.cings.scoring import evaluation_table
from groundflow.io.artifacts import atomic_write_text, read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
keys = ["dataset", "mode", "setting"]
runs = [dict(zip(keys, run)) for run in snakemake.params.runs]
frames, rejected = [], []
for run, predictions_path, counts_path in zip(runs, snakemake.input.predictions, snakemake.input.counts):
    counts = json.loads(Path(counts_path).read_text())
    frame = read_table(predictions_path)
    if len(frame) != counts["out"]:
        raise ValueError(f"{predictions_path}: {len(frame)} rows, but its counts file says out={counts['out']}")
    frames.append(frame.assign(dataset=run["dataset"], mode=run["mode"]))
    rejected.append({**run, "rejected": counts["rejected"]})
for counts_path in snakemake.input.record_counts:
    counts = json.loads(Path(counts_path).read_text())
    log.info("%s: %d records, %d valid, %d rejected", counts["source"], counts["in"], counts["out"], counts["rejected"])
predictions = pd.concat(frames, ignore_index=True)
scored, table = evaluation_table(predictions, pd.DataFrame(rejected),
                                 use_stemmer=snakemake.params.scoring["rouge_stemmer"])
write_table(scored, snakemake.output.scores)
write_table(table, snakemake.output.table, schema=table_schema("cings_eval_table"))
atomic_write_text(snakemake.output.tsv, table.to_csv(sep="\t", index=False, float_format="%.4f"))
log.info("CINGS evaluation:\n%s", table.to_string(index=False))
