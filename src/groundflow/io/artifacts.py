"""Atomic file writes and Parquet tables.

Every artifact is written to a temporary name in the destination folder and renamed into place,
so a killed job never leaves a half-written file that a later step would trust.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REJECT_COLUMNS = ["stage", "id", "reason"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last so libraries that infer the format from the name (PIL) still work.
    prefix, tmp_suffix = f".{path.name}.", f".tmp{suffix or path.suffix}"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=tmp_suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fault_delay_before_rename(path)
        _as_if_created_plainly(tmp_path, 0o666)
        os.replace(tmp_path, path)
        # a write of this path killed before its rename left its temp file; one producer per path
        # (Snakemake's rule) means no other write of it is in flight now
        for stale in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(tmp_suffix)}"):
            stale.unlink(missing_ok=True)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _as_if_created_plainly(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create owner-only (0600/0700) entries; an artifact gets the mode a plain
    open()/mkdir() would give it under the umask, so others on a shared cluster can read results."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


# Test-only fault injection: the window between writing a temp file and renaming it is too short
# for a test to kill a job inside it reliably. With GROUNDFLOW_FAULT_RENAME_DELAY="<seconds>:<glob>"
# a write whose destination path matches the glob (fnmatch; `*` also matches `/`) waits that long
# with its temp file written and not yet renamed (tests/workflow/test_kill_resume.py). Unset: no-op.
FAULT_RENAME_DELAY_ENV = "GROUNDFLOW_FAULT_RENAME_DELAY"


def _fault_delay_before_rename(path: Path) -> None:
    spec = os.environ.get(FAULT_RENAME_DELAY_ENV)
    if not spec:
        return
    seconds, _, pattern = spec.partition(":")
    if fnmatch.fnmatch(str(path), pattern):
        time.sleep(float(seconds))


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir` whole.

    A model folder is several files (config, weights, tokenizer); building them in a temporary
    folder and renaming it means a killed build never leaves a folder that looks complete.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out_dir.name}."
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=prefix, suffix=".tmp"))
    try:
        yield tmp
        _as_if_created_plainly(tmp, 0o777)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        # as for files: a build of this folder killed before its rename left its temp folder
        # (mkdtemp's random part is 8 characters, so a sibling folder's temp never matches)
        leftover = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}\.tmp")
        for stale in out_dir.parent.iterdir():
            if stale.is_dir() and leftover.fullmatch(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def append_json_lines(path: str | os.PathLike, entries: Sequence[dict]) -> None:
    """Append `entries` as JSON lines in one O_APPEND write, synced: processes sharing the file
    never interleave inside a line, and a killed writer leaves at most a torn last line (which the
    readers of such caches skip). The caches of judge answers are such files."""
    if not entries:
        return
    blob = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries).encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, blob)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_appended_json_lines(path: str | os.PathLike, fields: Sequence[str]) -> Iterator[dict]:
    """The entries of a file written by `append_json_lines` that hold every one of `fields`, in
    file order; nothing when there is no file. A line that is not a whole JSON object with those
    fields (a write cut short by a killed job, even inside a multi-byte character) is skipped with
    a warning naming it, so its entry is simply made again."""
    path = Path(path)
    if not path.exists():
        return
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
            if not isinstance(entry, dict) or any(field not in entry for field in fields):
                raise ValueError("fields missing")
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            logging.getLogger(__name__).warning("%s line %d is unreadable (a write cut short?); skipped", path, number)
            continue
        yield entry


def write_table(
    df: pd.DataFrame, path: str | os.PathLike, schema: pa.Schema | None = None
) -> None:
    """Write a DataFrame as Parquet, atomically. With `schema`, columns are cast (and checked)."""
    if schema is not None:
        missing = [name for name in schema.names if name not in df.columns]
        if missing:
            raise ValueError(f"table for {path} lacks columns {missing}")
        table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    else:
        table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | os.PathLike, columns: list[str] | None = None, filters=None) -> pd.DataFrame:
    """A Parquet table, only `columns` if named and only rows passing pyarrow `filters` if given
    (both read no more of the file than they need)."""
    return pq.read_table(path, columns=columns, filters=filters).to_pandas()


def concat_tables(paths: Sequence[str | os.PathLike], columns: list[str] | None = None) -> pd.DataFrame:
    """Concatenate Parquet files (shards) in the order given, only `columns` if named; empty
    shards keep their columns."""
    frames = [read_table(p, columns=columns) for p in paths]
    non_empty = [f for f in frames if len(f)]
    if not non_empty:
        return frames[0].iloc[0:0] if frames else pd.DataFrame(columns=columns)
    return pd.concat(non_empty, ignore_index=True)
