"""GWYS evaluation of one model on every evaluation set of the config (the model loaded once):
greedy answers in the model's output form, scored by problem type; predictions (one row per set x
question), rejects and scores per set (accuracy, format rate, by type and source); chunks a killed
job resumes from."""
import shutil

from groundflow.generate.backends import open_generator
from groundflow.gwys.evaluate import EvalSettings, evaluate_model
from groundflow.gwys.prompts import load_question_prompts
from groundflow.io.artifacts import atomic_write_json, write_table
from groundflow.io.schemas import table_schema
from groundflow.models.spec import offline_hub
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0] if snakemake.log else None)
offline_hub()
params = snakemake.params
settings = EvalSettings(form=params.form, max_new_tokens=int(params.max_new_tokens), rules=params.get("rules", "fixed"))
prompt_files = params.get("prompts") or {}
prompts = load_question_prompts(settings.form, prompt_files.get(settings.form), prompt_files.get("types"))
tables = snakemake.input.sets
tables = [tables] if isinstance(tables, str) else list(tables)  # one set or several, in params.sets' order
if len(tables) != len(params.sets):
    raise ValueError(f"{len(tables)} evaluation tables for the sets {[s['name'] for s in params.sets]}")
sets = {entry["name"]: (table, entry["media_root"]) for entry, table in zip(params.sets, tables)}
progress_dir = params.get("progress_dir")
with open_generator(params.generation, kind="vision") as generator:
    evaluation = evaluate_model(sets, generator, prompts, settings, chunk_size=int(params.get("chunk_size", 64)),
                                progress_dir=progress_dir,
                                produced_by={"model": params.get("model"), "generator": generator.describe()})
write_table(evaluation.rejects, snakemake.output.rejects, schema=table_schema("rejects"))
write_table(evaluation.predictions, snakemake.output.predictions, schema=table_schema("gwys_eval_predictions"))
atomic_write_json(snakemake.output.scores, {"model": params.get("model"), **evaluation.scores})
if progress_dir:
    shutil.rmtree(progress_dir, ignore_errors=True)
