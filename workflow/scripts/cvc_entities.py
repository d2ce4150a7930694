"""Entity extraction: few-shot prompt (a file: cvc.entities.prompt, or ours), greedy decoding
constrained to spans of the caption (or, on an endpoint without guided decoding, free decoding
filtered to them: `decoding` says which)."""
from groundflow.cvc.entities import entity_decoding, extract_entities, load_entity_prompt
from groundflow.generate.backends import open_generator
from groundflow.pipeline import StageJob, log

job = StageJob.from_snakemake(snakemake, "entities")
opts = snakemake.params.opts
# Loaded before the model, so a malformed prompt file fails the job at once.
prompt = load_entity_prompt(opts["prompt"])
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
            records, generator, prompt=prompt, max_entities=opts["max_entities"],
            max_span_words=opts["max_span_words"], max_new_tokens=opts["max_new_tokens"],
        ),
        # the prompt's version (its file's name and a hash of its text), not the path in opts
        produced_by={"generator": generator.describe(), "decoding": decoding, **opts, "prompt": prompt.version},
        chunk_size=opts["chunk_size"],
        parent_column="caption_ids",
        group_column="image_id",  # entities are de-duplicated per image: never split an image
    )
