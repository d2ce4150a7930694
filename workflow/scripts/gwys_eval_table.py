"""GWYS' evaluation table: the scores of every model (base, SFT, the GRPO variants) on every
evaluation set, one row per model, one column per set; accuracy as a CSV (or TSV by the file's
suffix: fractions) and as Markdown (percent, the paper's layout)."""
import json

from groundflow.gwys.evaluate import eval_table, table_markdown
from groundflow.io.artifacts import atomic_write_text
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0] if snakemake.log else None)
paths = snakemake.input.scores
paths = [paths] if isinstance(paths, str) else list(paths)
models = list(snakemake.params.rows)
if len(paths) != len(models):
    raise ValueError(f"{len(paths)} scores files for the models {models}")
scores = {model: json.loads(open(path, encoding="utf-8").read()) for model, path in zip(models, paths)}
metric = snakemake.params.get("metric", "accuracy")
table = eval_table(scores, metric=metric, sets=snakemake.params.get("sets"))
separator = "\t" if str(snakemake.output.table).endswith(".tsv") else ","
atomic_write_text(snakemake.output.table, table.to_csv(sep=separator, float_format="%.4f"))
atomic_write_text(snakemake.output.markdown, table_markdown(table))
