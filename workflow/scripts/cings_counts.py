"""Per-step counts (convert, tokenize and train per mode) and every reject, in one table each."""
import json

import pandas as pd

from groundflow.cings.training import stage_counts, train_rejects
from groundflow.io.artifacts import read_table, write_table
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
modes = snakemake.params.modes
convert = json.load(open(snakemake.input.convert))
tokenize = [json.load(open(path)) for path in snakemake.input.tokenize]
summaries = {mode: json.load(open(path)) for mode, path in zip(modes, snakemake.input.summaries)}
counts = stage_counts(convert, tokenize, summaries)
rejects = pd.concat(
    [read_table(snakemake.input.convert_rejects)] + [read_table(p) for p in snakemake.input.tokenize_rejects] + [train_rejects(summaries)],
    ignore_index=True,
)
counts.to_csv(snakemake.output.counts, sep="\t", index=False)
write_table(rejects, snakemake.output.rejects)
log.info("counts:\n%s", counts.to_string(index=False))
