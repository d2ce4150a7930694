"""Decode every image once; reject the captions of unusable images."""
from groundflow.cvc.ingest import check_images
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, "images")
image_root = snakemake.params.image_root
job.run(lambda records: check_images(records, image_root), produced_by={"image_root": image_root})
