"""Artifact IO: atomic writes, Parquet tables, rejects, resumable chunked stages."""

from groundflow.io.artifacts import (
    REJECT_COLUMNS,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    read_table,
    write_table,
)
from groundflow.io.stage import StageResult, check_accounting, rejects_frame, run_chunked

__all__ = [
    "REJECT_COLUMNS",
    "StageResult",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_accounting",
    "read_table",
    "rejects_frame",
    "run_chunked",
    "write_table",
]
