"""TSST's value-guided search of one question table with one policy and one value checkpoint.

input:  records (tsst_questions Parquet), policy (a LLaVA checkpoint folder), value (a value-model
        folder, groundflow.models.value_model), images (optional: the set's image folder when a rule
        makes it, e.g. the fixture's)
output: kept (tsst_search Parquet, one row per question), rejects, counts
params: image_root (the set's image folder, read as it is: a user's folder is no rule input; else
        input.images), search (tsst.search settings, groundflow.tsst.search.SearchConfig), seed, chunk_size,
        progress_dir, models ({policy: {device, dtype}, value: {device, dtype}}), prompts
        ({with_image, text_only} prompt files or null), batch_rows, value_batch_size, pad_square
log:    the job's log
The job runs chunks of questions with resume checkpoints (groundflow.pipeline.StageJob); each chunk's
questions are searched together (groundflow.tsst.search_stage.search_frame).
"""
from groundflow.io.artifacts import read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.models.llava import load_llava
from groundflow.models.spec import ModelSpec
from groundflow.models.value_model import ValueScorer, load_value_model
from groundflow.pipeline import StageJob, log, setup_logging
from groundflow.tsst.prompts import load_question_prompts
from groundflow.tsst.search import SearchConfig, log_fixes
from groundflow.tsst.search_models import LlavaPolicy
from groundflow.tsst.search_stage import STAGE, declared_frame, search_frame

setup_logging(snakemake.log[0])
params = snakemake.params
config = SearchConfig.from_config(params.search)
seed = int(params.seed)
models = params.get("models") or {}
prompt_files = params.get("prompts") or {}
prompts = load_question_prompts(prompt_files.get("with_image"), prompt_files.get("text_only"))
image_root = params.get("image_root") or snakemake.input.get("images") or None
pad_square = bool(params.get("pad_square", True))

policy_spec = ModelSpec.from_config({**models.get("policy", {}), "path": snakemake.input.policy})
value_spec = ModelSpec.from_config({**models.get("value", {}), "path": snakemake.input.value})
job = StageJob(STAGE, records=snakemake.input.records, kept=snakemake.output.kept, rejects=snakemake.output.rejects,
               counts=snakemake.output.counts, progress_dir=params.get("progress_dir"), log_file=snakemake.log[0])
log_fixes(config)
policy_model, policy_processor = load_llava(policy_spec)
policy = LlavaPolicy(policy_model, policy_processor, config, batch_rows=int(params.get("batch_rows", 64)),
                     pad_square=pad_square)
value_model, value_processor = load_value_model(value_spec)
scorer = ValueScorer(value_model, value_processor, batch_size=int(params.get("value_batch_size", 16)),
                     pad_square=pad_square)
log.info("%s: policy %s, value %s, seed %d, %s", STAGE, policy_spec.path, value_spec.path, seed, policy.describe())
job.run(
    lambda chunk: search_frame(chunk, policy, scorer, config, seed, image_root=image_root, prompts=prompts),
    produced_by={"policy": policy_spec.describe(), "value": value_spec.describe(), "search": config.describe(),
                 "seed": seed, "prompts": prompts.version, "policy_decoding": policy.describe(),
                 "image_root": str(image_root) if image_root else None},
    chunk_size=int(params.get("chunk_size", 8)),
)
# StageJob writes without a schema: rewritten in the declared one (an all-rejected job's empty table included)
write_table(declared_frame(read_table(snakemake.output.kept)), snakemake.output.kept, schema=table_schema(STAGE))
