"""Report: a grid of occluded images, each titled with the entity hidden in it."""
from pathlib import Path

from groundflow.io.artifacts import read_table
from groundflow.pipeline import setup_logging
from groundflow.report.plots import choose_examples, plot_occluded_grid, save_figure
from groundflow.report.sources import load_images

setup_logging(snakemake.log[0])
instances = read_table(snakemake.input.instances, columns=["id", "image_id", "label", "box", "occluded_image"])
examples = choose_examples(instances, snakemake.params.n_examples)
images = load_images([Path(snakemake.params.image_dir, p) for p in examples["occluded_image"]])
save_figure(plot_occluded_grid(images, list(examples["label"]), list(examples["box"])), snakemake.output.plot)
