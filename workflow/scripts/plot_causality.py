"""Report: causality perplexities of kept and rejected entities against the keep window."""
import logging

from groundflow.pipeline import setup_logging
from groundflow.report.plots import causality_scores, plot_causality, save_figure
from groundflow.io.artifacts import concat_tables

setup_logging(snakemake.log[0])
rejects = concat_tables(snakemake.input.rejects, ["id", "reason"])
scores = causality_scores(concat_tables(snakemake.input.kept, ["id", "causality_ppl"]), rejects)
n_unscored = len(rejects) - int((~scores["kept"]).sum())
logging.info("%d scored entities (%d kept), %d rejected without a score", len(scores), scores["kept"].sum(), n_unscored)
save_figure(plot_causality(scores, ppl_low=snakemake.params.ppl_low, ppl_high=snakemake.params.ppl_high,
                           n_unscored=n_unscored), snakemake.output.plot)
