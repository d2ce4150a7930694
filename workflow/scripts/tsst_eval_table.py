"""TSST's evaluation table: per round, direct accuracy and the search metrics (greedy, absolute,
voting as the original counts it and fixed, majority vote) over all questions of the eval split, as
a long Parquet table and its pivot (.tsv, one column per round)."""
from groundflow.io.artifacts import atomic_write_text, read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import setup_logging
from groundflow.tsst.verify import evaluation_rows, pivot

setup_logging(snakemake.log[0] if snakemake.log else None)


def by_round(paths, rounds, what):
    # Snakemake gives a named input of one file as a string, of several as a list
    paths = [paths] if isinstance(paths, str) else list(paths)
    rounds = [rounds] if isinstance(rounds, int) else [int(r) for r in rounds]
    if len(paths) != len(rounds):
        raise ValueError(f"{len(paths)} {what} tables but {len(rounds)} rounds: {rounds}")
    return {r: read_table(p) for r, p in zip(rounds, paths)}


questions = read_table(snakemake.input.questions)
table = evaluation_rows(
    questions,
    direct=by_round(snakemake.input.get("direct", []), snakemake.params.get("direct_rounds", []), "direct"),
    search=by_round(snakemake.input.get("search", []), snakemake.params.get("search_rounds", []), "search"),
)
write_table(table, snakemake.output.table, schema=table_schema("tsst_eval_table"))
atomic_write_text(snakemake.output.tsv, pivot(table).to_csv(sep="\t", index=False, float_format="%.4f"))
