"""Build one dataset's KILT-style evaluation file: its questions (with gold passages) and the top-k
passages a dense retriever finds for each in its corpus; bad questions and passages to rejects."""
import shutil

from groundflow.cings.kilt_build import build_kilt_file
from groundflow.embed import load_embedder
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
batch_size = int(snakemake.params.batch_size)
vectors_dir = snakemake.params.get("vectors_dir")
embedder = load_embedder(snakemake.params.retriever, batch_size=batch_size)
log.info("retriever: %s", embedder.describe())
build_kilt_file(
    snakemake.input.questions,
    snakemake.input.corpus,
    embedder,
    top_k=int(snakemake.params.top_k),
    batch_size=batch_size,
    out=snakemake.output.eval,
    rejects=snakemake.output.rejects,
    counts=snakemake.output.counts,
    vectors_dir=vectors_dir,
)
if vectors_dir and not snakemake.params.get("keep_vectors", False):
    shutil.rmtree(vectors_dir, ignore_errors=True)
