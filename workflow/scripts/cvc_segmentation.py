"""Segmentation: a SAM mask per box of each entity (one stacked PNG per entity), one image embedding per image.

Each chunk writes its masks into its checkpoint (the progress folder, which Snakemake does not
own); they go into the shard's mask folder after its tables, so a killed job resumes with the
finished chunks' masks as well as their rows.
"""
from groundflow.models.sam import load_sam
from groundflow.pipeline import StageJob
from groundflow.vision.segmentation import mask_groups, segment

job = StageJob.from_snakemake(snakemake, "segmentation")
opts = snakemake.params.opts
spec = job.model("sam")
sam = load_sam(spec)
job.run(
    lambda records, files_dir: segment(
        records, snakemake.params.image_root, sam, mask_dir=snakemake.output.masks, write_dir=files_dir,
        relative_to=snakemake.params.relative_to, mask_choice=opts["mask_choice"],
        min_mask_area=opts["min_mask_area"], batch_boxes=opts["batch_boxes"],
        clip_to_box=opts["clip_to_box"], compute_dtype=spec.torch_dtype(),
    ),
    produced_by={"model": spec.describe(), **opts},
    chunk_size=opts["chunk_size"],
    group_column=mask_groups,  # an image's rows, and rows whose mask files share a name, in one chunk
    files_to=snakemake.output.masks,
)
