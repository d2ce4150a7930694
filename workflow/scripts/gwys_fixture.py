"""Write the bundled GWYS demo data: LLaVA-CoT-style SFT records (a few in the converted form), a
Video-R1-style RL pool and an evaluation set (POPE-style yes/no, shape multiple choice, counts) on
drawn scenes; with `params.include_bad`, one bad record of every kind the loaders reject."""
from groundflow.gwys.fixture import FixturePaths, make_gwys_fixture
from groundflow.io.artifacts import atomic_write_json
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0] if snakemake.log else None)
paths = FixturePaths(cot=snakemake.output.cot, pool=snakemake.output.pool, eval=snakemake.output.eval,
                     images=snakemake.output.images)
summary = make_gwys_fixture(paths, seed=snakemake.params.seed, include_bad=snakemake.params.include_bad)
atomic_write_json(snakemake.output.summary, summary)
for name, written in summary["files"].items():
    log.info("gwys fixture %s: %d entries, %d good, %d bad", name, written["entries"], written["good"], len(written["bad"]))
    for case in written["bad"]:
        log.info("%s: bad entry %d (%s) must be rejected as %s: %s", name, case["line"], case["case"], case["id"],
                 case["reason"])
