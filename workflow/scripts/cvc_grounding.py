"""Grounding: zero-shot boxes for each high-causality entity (Grounding DINO, or GLIP by command)."""
from pathlib import Path

from groundflow.models.grounding_dino import load_grounding_dino
from groundflow.pipeline import StageJob
from groundflow.vision.grounding import backend_box_threshold, detect_boxes, run_external_grounder

job = StageJob.from_snakemake(snakemake, "grounding")
opts = snakemake.params.opts
image_root = snakemake.params.image_root
box_threshold = backend_box_threshold(opts)
if opts["backend"] == "glip":
    if not opts["glip_command"]:
        raise ValueError("cvc.grounding.backend is 'glip' but cvc.grounding.glip_command is empty")
    workdir = Path(snakemake.params.progress_dir).with_name(f"glip-{snakemake.wildcards.shard}")

    def process(records):
        return run_external_grounder(
            records, image_root, command=opts["glip_command"],
            box_threshold=box_threshold, max_boxes=opts["max_boxes"], workdir=workdir,
        )

    produced_by = {"backend": "glip", **opts}
else:
    spec = job.model("detector")
    model, processor = load_grounding_dino(spec)

    def process(records):
        return detect_boxes(
            records, image_root, model, processor, box_threshold=box_threshold,
            text_threshold=opts["text_threshold"], batch_size=opts["batch_size"],
            max_boxes=opts["max_boxes"],
        )

    produced_by = {"model": spec.describe(), **opts}
job.run(process, produced_by=produced_by, chunk_size=opts["chunk_size"])
