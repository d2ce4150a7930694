"""Segmentation: SAM masks from the entity's boxes, one image embedding per image."""
from groundflow.models.sam import load_sam
from groundflow.pipeline import StageJob
from groundflow.vision.segmentation import segment

job = StageJob.from_snakemake(snakemake, "segmentation")
opts = snakemake.params.opts
spec = job.model("sam")
sam = load_sam(spec)
job.run(
    lambda records: segment(
        records, snakemake.params.image_root, sam, mask_dir=snakemake.output.masks,
        relative_to=snakemake.params.relative_to, mask_choice=opts["mask_choice"],
        min_mask_area=opts["min_mask_area"], batch_boxes=opts["batch_boxes"],
        clip_to_box=opts["clip_to_box"], compute_dtype=spec.torch_dtype(),
    ),
    produced_by={"model": spec.describe(), **opts},
)
