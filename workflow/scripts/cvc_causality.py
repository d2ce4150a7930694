"""Causality tagging: masked-LM perplexity of each entity in its caption."""
from groundflow.cvc.causality import tag_causality
from groundflow.models.masked_lm import load_masked_lm
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, "causality")
opts = snakemake.params.opts
spec = job.model("masked_lm")
model, tokenizer = load_masked_lm(spec)
job.run(
    lambda records: tag_causality(
        records, model, tokenizer, batch_size=opts["batch_size"],
        ppl_low=opts["ppl_low"], ppl_high=opts["ppl_high"],
    ),
    produced_by={"model": spec.describe(), **opts},
    chunk_size=opts["chunk_size"],
)
