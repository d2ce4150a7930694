"""Report: how many entities each caption yielded."""
import logging

from groundflow.pipeline import setup_logging
from groundflow.report.plots import entities_per_caption, plot_entities_per_caption, save_figure
from groundflow.io.artifacts import concat_tables

setup_logging(snakemake.log[0])
counts = entities_per_caption(concat_tables(snakemake.input.captions, ["id"]),
                              concat_tables(snakemake.input.entities, ["caption_ids"]))
logging.info("entities per caption:\n%s", counts.value_counts().sort_index().to_string())
save_figure(plot_entities_per_caption(counts, max_entities=snakemake.params.max_entities), snakemake.output.plot)
