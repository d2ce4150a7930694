"""Split the GWYS RL pool into the shards its rollout jobs take (row i to shard i mod n)."""
from groundflow.gwys.data import write_pool
from groundflow.io.artifacts import read_table
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
pool = read_table(snakemake.input.pool)
shards = list(snakemake.output.shards)
for index, path in enumerate(shards):
    part = pool.iloc[index::len(shards)]
    write_pool(part.reset_index(drop=True), path)
    log.info("shard %d: %d of %d pool samples", index, len(part), len(pool))
