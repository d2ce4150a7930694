"""Write the demo's inputs of the KILT-style file builder: questions.jsonl and corpus.jsonl."""
from pathlib import Path

from groundflow.cings.retrieval_fixture import make_retrieval_fixture
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
folder = Path(snakemake.output.questions).parent
expected = {"questions": folder / "questions.jsonl", "corpus": folder / "corpus.jsonl"}
for key, path in expected.items():
    if Path(snakemake.output[key]) != path:
        raise ValueError(f"output {key} must be {path} (the fixture's names, in one folder), not {snakemake.output[key]}")
summary = make_retrieval_fixture(folder, include_bad=snakemake.params.include_bad)
log.info("CINGS retrieval fixture: %s", summary)
