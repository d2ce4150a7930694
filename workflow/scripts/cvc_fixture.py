"""Draw the bundled demo fixture (scenes, captions, one record of each kind of bad input)."""
from pathlib import Path

from groundflow.cvc.fixture import make_fixture
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
summary = make_fixture(
    Path(snakemake.output.captions).parent,
    seed=snakemake.params.seed,
    n_images=snakemake.params.n_images,
    include_bad=snakemake.params.include_bad,
)
log.info("fixture: %s", summary)
