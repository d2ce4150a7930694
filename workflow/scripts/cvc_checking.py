"""Answer checking: dense similarity of each extracted answer with the hidden entity."""
from groundflow.cvc.trials import check_answers
from groundflow.embed import load_embedder
from groundflow.pipeline import StageJob

job = StageJob.from_snakemake(snakemake, "checking")
opts = snakemake.params.opts
embedder = load_embedder(snakemake.params.models["embedder"], batch_size=opts["batch_size"])
job.run(
    lambda records: check_answers(records, embedder, threshold=opts["threshold"]),
    produced_by={"embedder": embedder.describe(), **opts},
    chunk_size=opts["chunk_size"],
)
