"""Split one TSST question set into the shards its search jobs take (row i to shard i mod n)."""
from groundflow.io.artifacts import read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
questions = read_table(snakemake.input.questions)
shards = list(snakemake.output.shards)
for index, path in enumerate(shards):
    part = questions.iloc[index::len(shards)]
    write_table(part.reset_index(drop=True), path, schema=table_schema("tsst_questions"))
    log.info("shard %d: %d of %d questions", index, len(part), len(questions))
