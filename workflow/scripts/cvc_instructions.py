"""Instruction generation: one question per occluded entity (its type by LM scoring, or by the
endpoint's guided decoding where it cannot score: `type_selection` says which)."""
from groundflow.cvc.instructions import type_selection, generate_instructions
from groundflow.cvc.prompts import PROMPT_VERSION
from groundflow.generate.backends import open_generator
from groundflow.pipeline import StageJob, log

job = StageJob.from_snakemake(snakemake, "instructions")
opts = snakemake.params.opts
# The stage's batch_size ((entity, type) pairs per forward pass) is the local generator's.
spec = {**snakemake.params.generation, "batch_size": opts["batch_size"]}
with open_generator(spec, kind="text", server_log=job.server_log) as generator:
    selection = type_selection(generator)  # refuses, naming what to set, before any record runs
    if selection != "lm_scoring":
        log.warning("instructions: %s cannot score the object types; the server chooses one by guided "
                    "decoding instead (type_selection: %s)", generator.describe()["backend"], selection)
    job.run(
        lambda records: generate_instructions(records, generator, object_types=opts["object_types"]),
        produced_by={"generator": generator.describe(), "type_selection": selection, "prompt": PROMPT_VERSION,
                     **opts},
        chunk_size=opts["chunk_size"],
    )
