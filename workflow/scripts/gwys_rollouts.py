"""K rollouts of every RL pool sample (or of this job's shard) by the chosen policy, through the
shared vision generator with the sampling settings stated in full, and their rule rewards; chunks a
killed job resumes from; an unreadable image or a video row rejects its sample."""
from groundflow.generate.backends import open_generator
from groundflow.gwys.prompts import load_question_prompts
from groundflow.gwys.rollouts import ROLLOUT_STAGE, RolloutSettings, roll_out
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, ROLLOUT_STAGE)
params = snakemake.params
settings = RolloutSettings.from_dict(params.settings)
prompt_files = params.get("prompts") or {}
prompts = load_question_prompts(settings.form, prompt_files.get(settings.form), prompt_files.get("types"))
with open_generator(params.generation, kind="vision", server_log=job.server_log) as generator:
    job.run(
        lambda records: roll_out(records, generator, settings, prompts, params.media_root),
        produced_by={"generator": generator.describe(), "sampling": settings.sampling().describe(),
                     "rollouts": settings.describe(), "prompts": prompts.version},
        chunk_size=int(params.get("chunk_size", 16)),
    )
