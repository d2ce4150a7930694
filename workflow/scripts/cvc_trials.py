"""Trial sampling: N rationales per occluded instance from the vision-language model."""
from groundflow.cvc.trials import sample_trials
from groundflow.generate.backends import SamplingParams, open_generator
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, "trials")
opts = snakemake.params.opts
params = SamplingParams(
    max_new_tokens=opts["max_new_tokens"], n=opts["n"], do_sample=True,
    temperature=opts["temperature"], top_p=opts["top_p"], seed=snakemake.params.seed,
)
# A managed server (`serve`) lives as long as this block, so it stops when the stage's work does.
with open_generator(snakemake.params.generation, kind="vision", server_log=job.server_log) as generator:
    job.run(
        lambda records: sample_trials(records, generator, params, image_dir=snakemake.params.image_dir),
        produced_by={"generator": generator.describe(), "sampling": params.describe()},
        chunk_size=opts["chunk_size"],
    )
