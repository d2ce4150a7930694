"""One self-training round's training data from its verified search chains: D+ (policy.json, the
highest-scored correct chain per question) and D_v (value.json, prefix values by the tree or the
per-chain rule), in LLaVA JSON, with the previous round's records before them when `accumulate`;
counts.json says how many questions, correct questions, records and dropped questions."""
import json
import logging

import pandas as pd

from groundflow.io.artifacts import atomic_write_json, read_table
from groundflow.pipeline import setup_logging
from groundflow.tsst.labels import accumulate, round_records
from groundflow.tsst.prompts import load_question_prompts
from groundflow.tsst.verify import as_list, chains_for_labels, questions_for_labels, train_questions

setup_logging(snakemake.log[0] if snakemake.log else None)
log = logging.getLogger("groundflow")
opts = snakemake.params.opts
prompt_files = snakemake.params.get("prompts") or {}
prompts = load_question_prompts(prompt_files.get("with_image"), prompt_files.get("text_only"))
questions = train_questions(snakemake.input.questions, snakemake.params.image_roots)
verified = pd.concat([read_table(p) for p in as_list(snakemake.input.verified)], ignore_index=True)
policy, value, counts = round_records(
    questions_for_labels(questions), chains_for_labels(verified), prompts, round_index=int(snakemake.params.round),
    value_labels=opts.get("value_labels", "tree"), leaf_rule=opts.get("leaf_rule", "any"),
    cut=opts.get("sentence_cut", "sentence"), require_final_answer=bool(opts.get("require_final_answer", False)),
)
counts["new_dplus_records"], counts["new_value_records"] = len(policy), len(value)
previous = {"policy": snakemake.input.get("previous_policy"), "value": snakemake.input.get("previous_value")}
if opts.get("accumulate", True):
    for name, path in previous.items():
        if path:
            earlier = json.loads(open(path, encoding="utf-8").read())
            if not isinstance(earlier, list):
                raise ValueError(f"{path}: a LLaVA JSON file is a list of records, not {type(earlier).__name__}")
            if name == "policy":
                policy = accumulate(earlier, policy, path)
            else:
                value = accumulate(earlier, value, path)
            counts[f"previous_{name}_records"] = len(earlier)
elif any(previous.values()):
    log.info("accumulate is off: the previous round's files are not included")
counts["dplus_records"], counts["value_records"] = len(policy), len(value)
counts["prompt_version"] = prompts.version
atomic_write_json(snakemake.output.policy, policy)
atomic_write_json(snakemake.output.value, value)
atomic_write_json(snakemake.output.counts, counts)
log.info("round %s: %d questions, %d with a correct chain, %d D+ and %d D_v records (this round), %d dropped",
         counts["round"], counts["questions"], counts["with_correct_chain"], counts["new_dplus_records"],
         counts["new_value_records"], counts["dropped_questions"])
