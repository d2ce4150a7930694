"""CVC's evaluation table: every benchmark's headline metric per checkpoint, the differences to the
base and the paper's reported ones (TSV + Markdown); every evaluation job's counts and rejects for
`groundflow status`."""
import json

from groundflow.evaluate.comparison import comparison_table, job_counts, job_rejects, table_markdown
from groundflow.io.artifacts import atomic_write_text
from groundflow.io.stage import write_stage_counts
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0] if snakemake.log else None)
paths = list(snakemake.input.results)
jobs = [tuple(job) for job in snakemake.params.jobs]
if len(paths) != len(jobs):
    raise ValueError(f"{len(paths)} result files for {len(jobs)} evaluation jobs")
results = {}
for (benchmark, model), path in zip(jobs, paths):
    with open(path, encoding="utf-8") as f:
        results.setdefault(benchmark, {})[model] = json.load(f)
splits = [json.load(open(path, encoding="utf-8")) for path in snakemake.input.splits]
held_out = sum(split["probe"] for split in splits)
notes = list(snakemake.params.notes)
notes.append(f"occluded_probe: {held_out} of {sum(split['in'] for split in splits)} instances held out of trial "
             "learning by picture (never in the hybrid data), scored by the trial answer check")
table = comparison_table(results, benchmarks=snakemake.params.benchmarks, models=list(snakemake.params.checkpoints))
atomic_write_text(snakemake.output.table, table.to_csv(sep="\t", index=False, float_format="%.4f"))
atomic_write_text(snakemake.output.markdown, table_markdown(table, notes=notes))
write_stage_counts(job_counts(results), [job_rejects(results)], counts_out=snakemake.output.counts,
                   rejects_out=snakemake.output.rejects, what="CVC evaluation")
log.info("CVC evaluation table:\n%s", table.to_string(index=False))
