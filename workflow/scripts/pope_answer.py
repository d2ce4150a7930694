"""POPE answers of one LLaVA checkpoint: each question asked with its image, greedily, in chunks
that a killed job resumes from; an unreadable image rejects its questions."""
from groundflow.evaluate.pope import ANSWERS_STAGE, answer_questions
from groundflow.generate.backends import SamplingParams, open_generator
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, ANSWERS_STAGE)
opts = snakemake.params.opts
system_prompt = snakemake.params.get("system_prompt", "")
params = SamplingParams(max_new_tokens=opts["max_new_tokens"], n=1, do_sample=False)
with open_generator(snakemake.params.generation, kind="vision", server_log=job.server_log) as generator:
    job.run(
        lambda records: answer_questions(records, generator, params, image_dir=snakemake.params.image_folder,
                                         system_prompt=system_prompt),
        produced_by={"generator": generator.describe(), "sampling": params.describe(), "system_prompt": system_prompt},
        chunk_size=opts["chunk_size"],
        # all questions about one image in one chunk: the image is read once
        group_column="image",
    )
