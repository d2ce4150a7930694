"""Draw the bundled demo fixture (scenes, captions, one record of each kind of bad input)."""
from pathlib import Path

from groundflow.cvc.fixture import make_fixture, make_instruction_data
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
summary = make_fixture(
    Path(snakemake.output.captions).parent,
    seed=snakemake.params.seed,
    n_images=snakemake.params.n_images,
    include_bad=snakemake.params.include_bad,
)
log.info("fixture: %s", summary)
make_instruction_data(snakemake.output.instruction_data, snakemake.output.images, seed=snakemake.params.seed)
