"""Answer extraction: the short answer each rationale commits to (few-shot, greedy), free as the
paper or confined to the rationale's own phrases (the demo)."""
from groundflow.cvc.trials import RATIONALE_CONFINED, extract_answers, load_extraction_prompt
from groundflow.generate.backends import SamplingParams, open_generator
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, "extraction")
opts = snakemake.params.opts
prompt = load_extraction_prompt(opts["mode"], opts["prompt"])  # a bad prompt file fails before the model loads
span_words = opts["answer_span_words"] if opts["mode"] == RATIONALE_CONFINED else None
params = SamplingParams(max_new_tokens=opts["max_new_tokens"], n=1, do_sample=False, stop=("\n",))
# A managed server (`serve`) lives as long as this block, so it stops when the stage's work does.
with open_generator(snakemake.params.generation, kind="text", server_log=job.server_log) as generator:
    job.run(
        lambda records: extract_answers(records, generator, params, mode=opts["mode"], prompt=prompt,
                                        answer_span_words=span_words),
        produced_by={"generator": generator.describe(), "sampling": params.describe(), "mode": opts["mode"],
                     "prompt": prompt.version, "answer_span_words": span_words},
        chunk_size=opts["chunk_size"],
    )
