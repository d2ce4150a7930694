"""Write the bundled CINGS demo data: Self-RAG records (one line of each kind of bad input) and a
small vision-language set (images, LCS-558K-style captions, 665K-style questions)."""
from pathlib import Path

from groundflow.cings.fixture import make_selfrag_fixture, make_vl_fixture
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
opts = snakemake.params.opts
summary = make_selfrag_fixture(
    Path(snakemake.output.records).parent,
    seed=snakemake.params.seed,
    n_records=opts["n_records"],
    include_bad=opts["include_bad"],
)
log.info("fixture: %s", summary)
log.info("vl fixture: %s", make_vl_fixture(Path(snakemake.output.pretrain).parent, seed=snakemake.params.seed))
