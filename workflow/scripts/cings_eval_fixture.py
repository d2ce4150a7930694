"""Write the demo's CINGS evaluation files, one per kind (`{kind}.jsonl` in one folder), bad records included."""
from pathlib import Path

from groundflow.cings.eval_fixture import make_eval_fixture
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
outputs = {kind: Path(path) for kind, path in snakemake.output.items()}
folders = {path.parent for path in outputs.values()}
misnamed = [str(path) for kind, path in outputs.items() if path.name != f"{kind}.jsonl"]
if len(folders) != 1 or misnamed:
    raise ValueError(f"the fixture's outputs must be {{kind}}.jsonl in one folder, named by kind: {misnamed or folders}")
summary = make_eval_fixture(folders.pop(), kinds=list(outputs), n_retrieved=snakemake.params.n_retrieved,
                            include_bad=snakemake.params.include_bad)
log.info("CINGS eval fixture: %s", summary)
