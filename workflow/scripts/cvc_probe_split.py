"""The CVC probe split of one shard: instances of held-out pictures (never trained on) apart from
those that go on to trial learning; no model."""
from groundflow.cvc.probe import optional_path, split_probe_files
from groundflow.pipeline import setup_logging

setup_logging(snakemake.log[0] if snakemake.log else None)
split_probe_files(
    records=snakemake.input.records,
    instruction_data=optional_path(snakemake.input.get("instruction_data")),
    trial_out=snakemake.output.trial,
    probe_out=snakemake.output.probe,
    counts_out=snakemake.output.counts,
    fraction=snakemake.params.fraction,
    seed=snakemake.params.seed,
    unseen_by_instruction_data=snakemake.params.unseen_by_instruction_data,
)
