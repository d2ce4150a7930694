"""Report: GWYS' reward-variance selection, every rolled-out sample at (mean, variance) of its rollout
rewards, coloured by class, the kept ones filled, the thresholds drawn."""
from groundflow.io.artifacts import read_table
from groundflow.pipeline import setup_logging
from groundflow.report.plots import plot_variance_selection, save_figure

setup_logging(snakemake.log[0] if snakemake.log else None)
selection = snakemake.params.selection
save_figure(plot_variance_selection(read_table(snakemake.input.table),
                                    variance_threshold=float(selection["variance_threshold"]),
                                    mean_threshold=float(selection["mean_threshold"])),
            snakemake.output.plot)
