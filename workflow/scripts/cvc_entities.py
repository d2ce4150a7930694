"""Entity extraction: few-shot prompt, greedy decoding constrained to spans of the caption (or, on
an endpoint without guided decoding, free decoding filtered to them: `decoding` says which)."""
from groundflow.cvc.entities import entity_decoding, extract_entities
from groundflow.cvc.prompts import PROMPT_VERSION
from groundflow.generate.backends import open_generator
from groundflow.pipeline import StageJob, log

job = StageJob.from_snakemake(snakemake, "entities")
opts = snakemake.params.opts
# The stage's batch_size is the local generator's (an endpoint batches by itself).
spec = {**snakemake.params.generation, "batch_size": opts["batch_size"]}
with open_generator(spec, kind="text", server_log=job.server_log) as generator:
    decoding = entity_decoding(generator)
    if decoding != "constrained":
        log.warning("entities: %s cannot constrain its answers to the caption's phrases; it writes freely and "
                    "only lines among the caption's candidates are kept (decoding: %s)",
                    generator.describe()["backend"], decoding)
    job.run(
        lambda records: extract_entities(
            records, generator, max_entities=opts["max_entities"], max_span_words=opts["max_span_words"],
        ),
        produced_by={"generator": generator.describe(), "decoding": decoding, "prompt": PROMPT_VERSION, **opts},
        chunk_size=opts["chunk_size"],
        parent_column="caption_ids",
        group_column="image_id",  # entities are de-duplicated per image: never split an image
    )
