"""Answer extraction: the short answer each rationale commits to (few-shot, greedy)."""
from groundflow.cvc.prompts import EXTRACTION_PROMPT_VERSION
from groundflow.cvc.trials import extract_answers
from groundflow.generate.backends import SamplingParams, open_generator
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, "extraction")
opts = snakemake.params.opts
params = SamplingParams(max_new_tokens=opts["max_new_tokens"], n=1, do_sample=False, stop=("\n",))
# A managed server (`serve`) lives as long as this block, so it stops when the stage's work does.
with open_generator(snakemake.params.generation, kind="text", server_log=job.server_log) as generator:
    job.run(
        lambda records: extract_answers(records, generator, params, answer_span_words=opts["answer_span_words"]),
        produced_by={"generator": generator.describe(), "sampling": params.describe(),
                     "prompt": EXTRACTION_PROMPT_VERSION, "answer_span_words": opts["answer_span_words"]},
        chunk_size=opts["chunk_size"],
    )
