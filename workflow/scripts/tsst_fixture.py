"""Write the bundled TSST demo data: ScienceQA-style train/eval questions with drawn scenes (a quarter
text-only), a VCR-style file with people and metadata, and warm-up CoT chains; with
`params.include_bad`, one line of every bad kind in each file."""
from groundflow.io.artifacts import atomic_write_json
from groundflow.pipeline import log, setup_logging
from groundflow.tsst.fixture import FixturePaths, make_tsst_fixture

setup_logging(snakemake.log[0])
paths = FixturePaths(train=snakemake.output.train, eval=snakemake.output.eval, images=snakemake.output.images,
                     vcr=snakemake.output.vcr, vcr_images=snakemake.output.vcr_images, cot=snakemake.output.cot)
summary = make_tsst_fixture(paths, seed=snakemake.params.seed, include_bad=snakemake.params.include_bad)
atomic_write_json(snakemake.output.summary, summary)
log.info("tsst fixture: lines per file %s (good %s), %d text-only questions, %d correct and %d incorrect chains",
         summary["lines"], summary["good"], summary["text_only"], summary["correct_chains"], summary["incorrect_chains"])
for name, cases in summary["bad"].items():
    for case in cases:
        log.info("%s: bad line %d (%s) must be rejected as %s: %s", name, case["line"], case["case"], case["id"], case["reason"])
