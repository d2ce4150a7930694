"""groundflow: one reproducible pipeline for grounded, knowledge-intensive VLM training."""

__version__ = "0.1.0"
