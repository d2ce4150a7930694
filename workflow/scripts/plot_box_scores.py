"""Report: detector box scores of grounded entities against the box threshold."""
from groundflow.pipeline import setup_logging
from groundflow.report.plots import box_scores, plot_box_scores, save_figure
from groundflow.io.artifacts import concat_tables

setup_logging(snakemake.log[0])
best, candidates = box_scores(concat_tables(snakemake.input.kept, ["box_score", "box_scores"]))
n_rejected = len(concat_tables(snakemake.input.rejects, ["id"]))
save_figure(plot_box_scores(best, candidates, threshold=snakemake.params.threshold, n_rejected=n_rejected),
            snakemake.output.plot)
