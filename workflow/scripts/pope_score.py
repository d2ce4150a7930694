"""POPE metrics per checkpoint and split (accuracy, precision, recall, F1, yes-ratio) into one table."""
import json
from pathlib import Path

import pandas as pd

from groundflow.evaluate.pope import pope_metrics
from groundflow.io.artifacts import atomic_write_text, read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
names = list(snakemake.params.checkpoints)
answers, counts = list(snakemake.input.answers), list(snakemake.input.counts)
if not (len(names) == len(answers) == len(counts)):
    raise ValueError(f"{len(names)} model names, {len(answers)} answer tables and {len(counts)} counts files")
frames = []
for name, answers_path, counts_path in zip(names, answers, counts):
    frame = read_table(answers_path)
    stage_counts = json.loads(Path(counts_path).read_text())
    if len(frame) != stage_counts["out"]:
        raise ValueError(f"{answers_path}: {len(frame)} rows, but its counts file says out={stage_counts['out']}")
    if stage_counts["rejected"]:
        log.warning("%s: %d questions were not answered (see its rejects)", name, stage_counts["rejected"])
    frames.append(pope_metrics(frame).assign(model=name))
table = pd.concat(frames, ignore_index=True)
write_table(table, snakemake.output.table, schema=table_schema("pope_metrics"))
columns = table_schema("pope_metrics").names
atomic_write_text(snakemake.output.tsv, table[columns].to_csv(sep="\t", index=False, float_format="%.4f"))
log.info("POPE:\n%s", table[columns].to_string(index=False))
