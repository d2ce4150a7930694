"""Judge every finished chain of a TSST search (tsst_search) against its question (tsst_questions):
one row per chain (tsst_verified), rejects for questions not in the table or without a chain, and
counts. Chunks of questions go to the judge in one batched call each; LLM verdicts are cached in
`params.cache` (JSONL, kept across runs and rounds), so a killed or repeated job asks nothing twice."""
import logging
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import pandas as pd

from groundflow.generate.backends import open_generator
from groundflow.io.artifacts import atomic_write_json, read_table, write_table
from groundflow.io.schemas import table_schema
from groundflow.io.stage import rejects_frame
from groundflow.judge.llm_judge import MultipleChoiceJudge, load_judge_prompts
from groundflow.pipeline import setup_logging
from groundflow.tsst.verify import VERIFIED_COLUMNS, VERIFY_STAGE, verify_search

setup_logging(snakemake.log[0] if snakemake.log else None)
log = logging.getLogger("groundflow")
start = time.perf_counter()
opts = dict(snakemake.params.judge_opts)
spec = snakemake.params.judge
search = read_table(snakemake.input.search)
questions = read_table(snakemake.input.questions)
if search["id"].duplicated().any():
    raise ValueError(f"{snakemake.input.search}: question ids repeated: {search.loc[search['id'].duplicated(), 'id'].tolist()[:3]}")
server_log = str(Path(snakemake.log[0]).with_suffix(".server.log")) if snakemake.log else None
chunk_size = max(int(opts.get("chunk_size", 64)), 1)
with (open_generator(spec, kind="text", server_log=server_log) if spec else nullcontext(None)) as generator:
    judge = MultipleChoiceJudge(
        generator, prompts=load_judge_prompts(opts.get("prompt"), opts.get("system_prompt")),
        cache=snakemake.params.cache, max_new_tokens=int(opts.get("max_new_tokens", 8)),
        max_consecutive_failures=int(opts.get("max_consecutive_failures", 3)),
    )
    kept_parts, reject_parts = [], []
    for begin in range(0, len(search), chunk_size):
        result = verify_search(search.iloc[begin:begin + chunk_size], questions, judge)
        kept_parts.append(result.kept)
        reject_parts.append(result.rejects)
        log.info("%s: %d/%d questions judged", VERIFY_STAGE, min(begin + chunk_size, len(search)), len(search))
kept = pd.concat(kept_parts, ignore_index=True) if kept_parts else pd.DataFrame(columns=VERIFIED_COLUMNS)
rejects = pd.concat(reject_parts, ignore_index=True) if reject_parts else rejects_frame(VERIFY_STAGE)
# one row per chain, so the accounting is over question ids: each is verified or rejected, once
inputs, out, rejected = set(search["id"].astype(str)), set(kept["id"]), set(rejects["id"])
if out & rejected or inputs != out | rejected:
    raise RuntimeError(f"{VERIFY_STAGE}: accounting broken: {sorted(inputs ^ (out | rejected))[:5]} / {sorted(out & rejected)[:5]}")
write_table(rejects, snakemake.output.rejects)
write_table(kept, snakemake.output.verified, schema=table_schema("tsst_verified"))
counts = {"stage": VERIFY_STAGE, "in": len(inputs), "out": len(out), "rejected": len(rejected), "chains": len(kept),
          "correct": int(kept["correct"].sum()), "verdicts": dict(Counter(kept["verdict"])),
          "judged_by": dict(Counter(kept["judged_by"])), "judge_prompts_sent": judge.calls,
          "seconds": round(time.perf_counter() - start, 3), "produced_by": judge.describe()}
atomic_write_json(snakemake.output.counts, counts)
log.info("%s: in %d = out %d + rejected %d; %d chains, %d correct; by %s", VERIFY_STAGE, counts["in"], counts["out"],
         counts["rejected"], counts["chains"], counts["correct"], counts["judged_by"])
