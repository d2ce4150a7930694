"""Instruction generation: one question per occluded entity, written freely by the text LLM (mode
free, the paper) or in the fixed shape with the type chosen by LM scoring or the endpoint's guided
decoding (mode typed: `type_selection` says which)."""
from groundflow.cvc.instructions import (FREE_GENERATION, TYPED, generate_instructions, load_instruction_prompt,
                                         type_selection)
from groundflow.generate.backends import open_generator
from groundflow.pipeline import StageJob, log

job = StageJob.from_snakemake(snakemake, "instructions")
opts = snakemake.params.opts
prompt = load_instruction_prompt(opts["mode"], opts["prompt"])  # a bad prompt file fails before the model loads
# The stage's batch_size (prompts, or (entity, type) pairs, per forward pass) is the local generator's.
spec = {**snakemake.params.generation, "batch_size": opts["batch_size"]}
with open_generator(spec, kind="text", server_log=job.server_log) as generator:
    if opts["mode"] == TYPED:
        selection = type_selection(generator)  # refuses, naming what to set, before any record runs
        if selection != "lm_scoring":
            log.warning("instructions: %s cannot score the object types; the server chooses one by guided "
                        "decoding instead (type_selection: %s)", generator.describe()["backend"], selection)
    else:
        selection = FREE_GENERATION
    job.run(
        lambda records: generate_instructions(
            records, generator, mode=opts["mode"], prompt=prompt, object_types=opts["object_types"],
            max_new_tokens=opts["max_new_tokens"]),
        produced_by={**opts, "generator": generator.describe(), "type_selection": selection,
                     "prompt": prompt.version, "prompt_file": prompt.source},
        chunk_size=opts["chunk_size"],
    )
