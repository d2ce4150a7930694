"""Trial sampling: N rationales per occluded instance from the vision-language model."""
from groundflow.cvc.trials import sample_trials
from groundflow.generate.backends import SamplingParams, open_generator
from groundflow.pipeline import StageJob
from groundflow.preflight import cuda_memory_bytes, refuse_unfit_trial_batch

job = StageJob.from_snakemake(snakemake, "trials")
opts = snakemake.params.opts
generation = snakemake.params.generation
# Before the model loads: a batch x n that cannot fit would otherwise fail only after the first
# batch's prefill, shards into the job.
if generation["backend"] == "hf":
    refuse_unfit_trial_batch(generation, opts, gpu_memory_gib=snakemake.params.gpu_memory_gib,
                             device_memory_bytes=cuda_memory_bytes(generation["model"].get("device")))
params = SamplingParams(
    max_new_tokens=opts["max_new_tokens"], n=opts["n"], do_sample=True,
    temperature=opts["temperature"], top_p=opts["top_p"], seed=snakemake.params.seed,
)
# A managed server (`serve`) lives as long as this block, so it stops when the stage's work does.
with open_generator(generation, kind="vision", server_log=job.server_log) as generator:
    job.run(
        lambda records: sample_trials(records, generator, params, image_dir=snakemake.params.image_dir),
        produced_by={"generator": generator.describe(), "sampling": params.describe()},
        chunk_size=opts["chunk_size"],
    )
