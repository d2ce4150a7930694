"""Occlusion: grey square patches inside each box's own mask (painted as one union), one image per (image, entity)."""
from groundflow.pipeline import StageJob
from groundflow.vision.occlusion import occlude

job = StageJob.from_snakemake(snakemake, "occlusion")
opts = snakemake.params.opts
job.run(
    lambda records: occlude(
        records, snakemake.params.image_root, mask_root=snakemake.params.relative_to,
        out_dir=snakemake.output.images, relative_to=snakemake.params.relative_to,
        seed=snakemake.params.seed, min_coverage=opts["min_coverage"], fill=tuple(opts["fill"]),
    ),
    produced_by={"seed": snakemake.params.seed, **opts},
)
