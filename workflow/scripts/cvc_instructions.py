"""Instruction generation: one question per occluded entity."""
from groundflow.cvc.instructions import generate_instructions
from groundflow.cvc.prompts import PROMPT_VERSION
from groundflow.models.causal_lm import load_causal_lm
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, "instructions")
opts = snakemake.params.opts
spec = job.model("text_llm")
model, tokenizer = load_causal_lm(spec)
job.run(
    lambda records: generate_instructions(
        records, model, tokenizer, batch_size=opts["batch_size"], object_types=opts["object_types"],
    ),
    produced_by={"model": spec.describe(), "prompt": PROMPT_VERSION, **opts},
)
