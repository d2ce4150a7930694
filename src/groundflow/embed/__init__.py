"""Dense sentence embeddings behind one interface (BGE-M3 through FlagEmbedding; MiniLM for the demo)."""

from groundflow.embed.embedders import (
    PACKAGED_MINILM,
    BGEM3Embedder,
    Embedder,
    SentenceTransformerEmbedder,
    build_tiny_bge_m3,
    embedder_backend,
    load_embedder,
    resolve_embedder_path,
    unit_rows,
)

__all__ = [
    "PACKAGED_MINILM",
    "BGEM3Embedder",
    "Embedder",
    "SentenceTransformerEmbedder",
    "build_tiny_bge_m3",
    "embedder_backend",
    "load_embedder",
    "resolve_embedder_path",
    "unit_rows",
]
