"""Entity extraction: few-shot prompt, greedy decoding constrained to spans of the caption."""
from groundflow.cvc.entities import extract_entities
from groundflow.cvc.prompts import PROMPT_VERSION
from groundflow.models.causal_lm import load_causal_lm
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, "entities")
opts = snakemake.params.opts
spec = job.model("text_llm")
model, tokenizer = load_causal_lm(spec)
job.run(
    lambda records: extract_entities(
        records, model, tokenizer, batch_size=opts["batch_size"],
        max_entities=opts["max_entities"], max_span_words=opts["max_span_words"],
    ),
    produced_by={"model": spec.describe(), "prompt": PROMPT_VERSION, **opts},
    chunk_size=opts["chunk_size"],
    parent_column="caption_ids",
    group_column="image_id",  # entities are de-duplicated per image: never split an image
)
