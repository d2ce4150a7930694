"""One checkpoint on one benchmark through lmms-eval (groundflow.evaluate.harness): its metrics,
every item's answer and score, and the records rejected with their reasons, as one JSON file."""
from groundflow.evaluate.harness import TASKS_DIR, run_benchmark
from groundflow.io.artifacts import atomic_write_json
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0] if snakemake.log else None)
benchmark = snakemake.params.benchmark
result = run_benchmark(
    model=snakemake.params.model,
    task=benchmark["task"],
    tasks_dir=benchmark.get("tasks_dir") or TASKS_DIR,
    data_files=benchmark["data_files"],
    limit=snakemake.params.limit,
    batch_size=snakemake.params.batch_size,
    judge=snakemake.params.judge,
)
atomic_write_json(snakemake.output.result, {"benchmark": benchmark["name"], "limit": snakemake.params.limit, **result})
log.info("%s on %s: %s (%d items scored, %d records rejected)", benchmark["name"], snakemake.params.model["path"],
         result["metrics"], result["n_samples"], len(result.get("rejects") or []))
