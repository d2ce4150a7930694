"""POPE questions from scene annotations: per image, yes-questions about its objects and as many
no-questions per split (random, popular, adversarial); scenes that cannot fill a split, or whose
image is missing, to rejects with why."""
from pathlib import Path

from groundflow.evaluate.pope import (
    QUESTION_FIELDS,
    QUESTION_PROMPT,
    QUESTIONS_STAGE,
    build_questions,
    load_scene_entries,
    parse_scenes,
)
from groundflow.io.artifacts import atomic_write_json, write_table
from groundflow.io.schemas import table_schema
from groundflow.io.stage import StageResult, check_accounting, rejects_frame
from groundflow.pipeline import log, setup_logging
from groundflow.prompts import load_prompt

setup_logging(snakemake.log[0])
opts = snakemake.params.opts
image_folder = Path(snakemake.params.image_folder)
prompt = load_prompt(opts.get("question_prompt"), QUESTION_PROMPT, fields=QUESTION_FIELDS)
parsed = parse_scenes(load_scene_entries(snakemake.input.scenes, name=str(snakemake.input.scenes)))
questions, unusable = build_questions(
    parsed.scenes, question_template=prompt.text, positives_per_image=opts["positives_per_image"],
    splits=opts["splits"], seed=snakemake.params.seed, min_objects=opts["min_objects"], images=opts["images"],
    image_exists=lambda image: (image_folder / image).is_file(), prompt_version=prompt.version,
)
rejects = rejects_frame(QUESTIONS_STAGE, parsed.rejects + unusable)
counts = check_accounting(QUESTIONS_STAGE, parsed.input_ids,
                          StageResult(kept=questions, rejects=rejects, parent_column="scene"))
write_table(rejects, snakemake.output.rejects, schema=table_schema("rejects"))
write_table(questions, snakemake.output.questions, schema=table_schema("pope_questions"))
per_split = {split: {"yes": int((part["label"] == "yes").sum()), "no": int((part["label"] == "no").sum())}
             for split, part in questions.groupby("split", sort=False)}
atomic_write_json(snakemake.output.counts, {
    **counts, "questions": len(questions), "per_split": per_split, "source": str(snakemake.input.scenes),
    "produced_by": {"prompt": prompt.version, "seed": snakemake.params.seed,
                    **{key: opts[key] for key in ("positives_per_image", "splits", "min_objects", "images")}},
})
log.info("%s: in %d = out %d + rejected %d scenes; %d questions %s", QUESTIONS_STAGE, counts["in"], counts["out"],
         counts["rejected"], len(questions), per_split)
for scene_id, reason in zip(rejects["id"], rejects["reason"]):
    log.info("rejected %s: %s", scene_id, reason)
