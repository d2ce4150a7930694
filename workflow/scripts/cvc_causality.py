"""Causality tagging: masked-LM perplexity of each entity in its caption."""
from groundflow.cvc.causality import tag_causality
from groundflow.generate.masked_lm import load_masked_lm_scorer
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, "causality")
opts = snakemake.params.opts
spec = job.model("masked_lm")
scorer = load_masked_lm_scorer(spec, batch_size=opts["batch_size"])
job.run(
    lambda records: tag_causality(records, scorer, ppl_low=opts["ppl_low"], ppl_high=opts["ppl_high"]),
    produced_by={"model": spec.describe(), **opts},
    chunk_size=opts["chunk_size"],
)
