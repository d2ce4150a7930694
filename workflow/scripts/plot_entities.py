"""Report: how many entities each caption yielded."""
import logging

from groundflow.pipeline import setup_logging
from groundflow.report.plots import entities_per_caption, plot_entities_per_caption, save_figure
from groundflow.report.sources import read_shards

setup_logging(snakemake.log[0])
counts = entities_per_caption(read_shards(snakemake.input.captions, ["id"]),
                              read_shards(snakemake.input.entities, ["caption_ids"]))
logging.info("entities per caption:\n%s", counts.value_counts().sort_index().to_string())
save_figure(plot_entities_per_caption(counts, max_entities=snakemake.params.max_entities), snakemake.output.plot)
