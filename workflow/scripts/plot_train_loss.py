"""Report: the training loss per logged step, from the trainer's summary."""
from groundflow.pipeline import setup_logging
from groundflow.report.plots import loss_history, plot_loss_curve, save_figure
from groundflow.report.sources import read_json

setup_logging(snakemake.log[0])
save_figure(plot_loss_curve(loss_history(read_json(snakemake.input.summary))), snakemake.output.plot)
