"""Write the demo's KILT-style CINGS evaluation file (valid questions plus bad records)."""
from groundflow.cings.eval_fixture import make_eval_fixture
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
summary = make_eval_fixture(
    snakemake.output[0],
    n_questions=snakemake.params.n_questions,
    n_retrieved=snakemake.params.n_retrieved,
    include_bad=snakemake.params.include_bad,
)
log.info("CINGS eval fixture: %s", summary)
