"""Direct evaluation of a TSST policy: one greedy chain-of-thought answer per question (the shared
vision generator, batched with left padding and an attention mask, in the vicuna_v1 conversation
with our question prompt), judged like the search's chains; chunks a killed job resumes from; an
unreadable image rejects its question."""
from contextlib import nullcontext

from groundflow.generate.backends import SamplingParams, open_generator
from groundflow.judge.llm_judge import MultipleChoiceJudge, load_judge_prompts
from groundflow.pipeline import StageJob
from groundflow.tsst.prompts import CONVERSATION_FORMAT, load_question_prompts
from groundflow.tsst.verify import DIRECT_STAGE, answer_directly

job = StageJob.from_snakemake(snakemake, DIRECT_STAGE)
opts = snakemake.params.opts
judge_opts = dict(snakemake.params.judge_opts)
prompt_files = snakemake.params.get("prompts") or {}
prompts = load_question_prompts(prompt_files.get("with_image"), prompt_files.get("text_only"))
policy_spec = dict(snakemake.params.generation)
if policy_spec.setdefault("conversation_format", CONVERSATION_FORMAT) != CONVERSATION_FORMAT:
    raise ValueError(f"TSST's policy is trained in {CONVERSATION_FORMAT}; the generation spec asks for "
                     f"{policy_spec['conversation_format']!r}")
params = SamplingParams(max_new_tokens=int(opts["max_new_tokens"]), n=1, do_sample=False)
judge_spec = snakemake.params.judge
with open_generator(policy_spec, kind="vision", server_log=job.server_log) as generator, \
        (open_generator(judge_spec, kind="text") if judge_spec else nullcontext(None)) as judge_generator:
    judge = MultipleChoiceJudge(
        judge_generator, prompts=load_judge_prompts(judge_opts.get("prompt"), judge_opts.get("system_prompt")),
        cache=snakemake.params.judge_cache, max_new_tokens=int(judge_opts.get("max_new_tokens", 8)),
        max_consecutive_failures=int(judge_opts.get("max_consecutive_failures", 3)),
    )
    job.run(
        lambda records: answer_directly(records, generator, judge, prompts, params, image_dir=snakemake.params.image_folder),
        produced_by={"generator": generator.describe(), "sampling": params.describe(), "prompts": prompts.version,
                     "judge": judge.describe()},
        chunk_size=int(opts.get("chunk_size", 32)),
    )
