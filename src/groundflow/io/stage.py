"""What every stage shares: its result (kept + rejected), the accounting invariant, and
chunked, resumable execution of a shard.

Invariant of every stage: each input record id ends up either among the kept records' parents
or in the rejects, never both and never neither (in = out + rejected).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from groundflow.io.artifacts import (REJECT_COLUMNS, atomic_path, atomic_write_json, atomic_write_text, read_table,
                                    write_table)

log = logging.getLogger(__name__)


def rejects_frame(stage: str, rows: Iterable[tuple[str, str]] = ()) -> pd.DataFrame:
    """A rejects table from (id, reason) pairs."""
    rows = list(rows)
    return pd.DataFrame(
        {"stage": [stage] * len(rows), "id": [r[0] for r in rows], "reason": [r[1] for r in rows]},
        columns=REJECT_COLUMNS,
    ).astype({"stage": str, "id": str, "reason": str})


@dataclass
class StageResult:
    """Kept records and rejected ids of one stage over some input records.

    `parent_column` names the kept column that holds the input id each kept row came from, for
    stages whose output rows are not one-to-one with their input (a list column is allowed: one
    output row may stand for several inputs).
    """

    kept: pd.DataFrame
    rejects: pd.DataFrame = field(default_factory=lambda: rejects_frame(""))
    parent_column: str = "id"

    def kept_parent_ids(self) -> set[str]:
        if self.kept.empty:
            return set()
        col = self.kept[self.parent_column]
        ids: set[str] = set()
        for value in col:
            if isinstance(value, str):
                ids.add(value)
            else:
                ids.update(str(v) for v in value)
        return ids


class AccountingError(RuntimeError):
    pass


def check_accounting(stage: str, input_ids: Iterable[str], result: StageResult) -> dict:
    """Raise unless every input id is kept or rejected, exactly once; return the counts."""
    inputs = list(input_ids)
    input_set = set(inputs)
    kept = result.kept_parent_ids()
    rejected = list(result.rejects["id"])
    rejected_set = set(rejected)
    problems = []
    if len(rejected) != len(rejected_set):
        problems.append(f"{len(rejected) - len(rejected_set)} ids rejected twice")
    if kept & rejected_set:
        problems.append(f"ids both kept and rejected: {sorted(kept & rejected_set)[:5]}")
    lost = input_set - kept - rejected_set
    if lost:
        problems.append(f"{len(lost)} input ids neither kept nor rejected: {sorted(lost)[:5]}")
    if "id" in result.kept and result.kept["id"].duplicated().any():
        dup = result.kept.loc[result.kept["id"].duplicated(), "id"].tolist()
        problems.append(f"output ids not unique: {dup[:5]}")
    unknown = (kept | rejected_set) - input_set
    if unknown:
        problems.append(f"ids not among the inputs: {sorted(unknown)[:5]}")
    if problems:
        raise AccountingError(f"stage {stage}: " + "; ".join(problems))
    return {"stage": stage, "in": len(input_set), "out": len(kept), "rejected": len(rejected_set)}


def fingerprint(params: dict) -> str:
    """A short stable hash of what produces a stage's output (model, prompt version, params)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


GROUP_KEY = "__chunk_group"


def run_chunked(
    records: pd.DataFrame,
    process: Callable[..., StageResult],
    *,
    chunk_size: int,
    progress_dir: str | Path | None,
    params: dict,
    parent_column: str = "id",
    group_column: str | Callable[[pd.DataFrame], pd.Series] | None = None,
    chunk_files: bool = False,
) -> tuple[StageResult, dict]:
    """Run `process` over `records` in chunks, checkpointing each finished chunk.

    Finished chunks are kept in `progress_dir` under a fingerprint of `params`; a restarted job
    skips them, so a killed job loses at most one chunk. Chunks written under other params are
    stale and are removed. Returns the combined result and stats (including how many chunks were
    recomputed versus reused). With `group_column` (a column, or a function giving each record's
    group), records of one group (e.g. all captions of an image, which a stage de-duplicates
    together) are made contiguous, in the order their groups first appear, and never split.

    With `chunk_files`, `process(chunk, files_dir)` also writes files (e.g. masks) into
    `chunk_files_dir(progress_dir, index)`: they are part of the chunk's checkpoint, kept and
    reused with its tables, and `publish_chunk_files` puts them into place at the end.
    """
    stats = {"chunks": 0, "chunks_reused": 0, "items_recomputed": 0}
    if chunk_files and not progress_dir:
        raise ValueError("a stage whose chunks write files needs a progress_dir to keep them in")
    keys: pd.Series | None = None
    if isinstance(group_column, str):
        records = records.sort_values(group_column, kind="stable").reset_index(drop=True)
        keys = records[group_column]
    elif group_column is not None:
        grouped = records.assign(**{GROUP_KEY: list(group_column(records))})
        grouped = grouped.sort_values(GROUP_KEY, kind="stable").reset_index(drop=True)
        keys, records = grouped[GROUP_KEY], grouped.drop(columns=GROUP_KEY)
    bounds = chunk_bounds(keys if keys is not None else len(records), chunk_size)
    kept_parts: list[pd.DataFrame] = []
    reject_parts: list[pd.DataFrame] = []
    pdir = Path(progress_dir) if progress_dir else None
    if pdir is not None:
        fp = fingerprint({"params": params, "ids": list(records["id"]), "chunk": chunk_size})
        manifest = pdir / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("fingerprint") != fp:
            log.info("progress in %s is stale (params or inputs changed); starting over", pdir)
            shutil.rmtree(pdir)
        pdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest, {"fingerprint": fp, "params": params})
    finished = [] if pdir is None else [
        i for i in range(len(bounds))
        if (pdir / f"chunk-{i:05d}.kept.parquet").exists()
        and (pdir / f"chunk-{i:05d}.rejects.parquet").exists()
    ]
    # how much of a restarted shard was saved, in the job's log (test_kill_resume.py reads it)
    done_items = sum(bounds[i][1] - bounds[i][0] for i in finished)
    log.info("resumed %d finished chunks (%d items), computing %d chunks (%d items)",
             len(finished), done_items, len(bounds) - len(finished), len(records) - done_items)
    for index, (start, stop) in enumerate(bounds):
        stats["chunks"] += 1
        kept_file = pdir / f"chunk-{index:05d}.kept.parquet" if pdir else None
        rej_file = pdir / f"chunk-{index:05d}.rejects.parquet" if pdir else None
        if kept_file is not None and kept_file.exists() and rej_file.exists():
            kept_parts.append(read_table(kept_file))
            reject_parts.append(read_table(rej_file))
            stats["chunks_reused"] += 1
            continue
        chunk = records.iloc[start:stop]
        if chunk_files:
            # files of a chunk killed part way are not trusted: the chunk starts over, files too
            files_dir = chunk_files_dir(pdir, index)
            shutil.rmtree(files_dir, ignore_errors=True)
            files_dir.mkdir(parents=True)
            result = process(chunk, files_dir)
        else:
            result = process(chunk)
        stats["items_recomputed"] += len(chunk)
        if kept_file is not None:
            # rejects first, kept last: kept's presence marks the chunk as finished
            write_table(result.rejects, rej_file)
            write_table(result.kept, kept_file)
            # A reused chunk is read from Parquet, which gives back its own dtypes (object strings
            # come back as `str`); a computed one is read back too, so the shard's output is the
            # same, byte for byte, however many of its chunks a resumed job reused.
            result = StageResult(kept=read_table(kept_file), rejects=read_table(rej_file))
        kept_parts.append(result.kept)
        reject_parts.append(result.rejects)
    kept = _concat(kept_parts, records.iloc[0:0])
    rejects = _concat(reject_parts, rejects_frame(""))
    return StageResult(kept=kept, rejects=rejects, parent_column=parent_column), stats


def chunk_files_dir(progress_dir: str | Path, index: int) -> Path:
    """Where chunk `index` of a `chunk_files` stage writes its files (see `run_chunked`)."""
    return Path(progress_dir) / f"chunk-{index:05d}.files"


def publish_chunk_files(progress_dir: str | Path, n_chunks: int, out_dir: str | Path) -> int:
    """Put the files of chunks 0..n_chunks-1 into `out_dir`; returns how many.

    Each file is hard-linked (copied where links are not possible) under a temporary name and
    renamed into place, so `out_dir` never holds a partial file, and the chunk's own copy stays
    until the progress folder is removed: should the job die before it finishes, Snakemake
    deletes `out_dir`, and the re-run publishes the reused chunks' files again. Two chunks giving
    one name is an error (the stage's grouping must keep such records in one chunk).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    owner: dict[str, int] = {}
    for index in range(n_chunks):
        files_dir = chunk_files_dir(progress_dir, index)
        for source in sorted(files_dir.iterdir()) if files_dir.is_dir() else []:
            if source.name in owner:
                raise RuntimeError(f"chunks {owner[source.name]} and {index} both wrote {source.name}")
            owner[source.name] = index
            with atomic_path(out_dir / source.name) as tmp:
                tmp.unlink()
                try:
                    os.link(source, tmp)
                except OSError:
                    shutil.copyfile(source, tmp)
    return len(owner)


def chunk_bounds(groups: "pd.Series | int", chunk_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk: `chunk_size` records, extended so no group is split."""
    n = groups if isinstance(groups, int) else len(groups)
    values = None if isinstance(groups, int) else groups.to_numpy()
    bounds, start = [], 0
    while start < n:
        stop = min(start + max(chunk_size, 1), n)
        while values is not None and 0 < stop < n and values[stop] == values[stop - 1]:
            stop += 1
        bounds.append((start, stop))
        start = stop
    return bounds


def _concat(parts: list[pd.DataFrame], empty: pd.DataFrame) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty
    return pd.concat(parts, ignore_index=True)


def read_counts(paths: list[str]) -> pd.DataFrame:
    """Sum per-shard counts files into one row per stage, in first-seen order."""
    rows = [json.loads(Path(p).read_text()) for p in paths]
    df = pd.DataFrame([{k: r[k] for k in ("stage", "in", "out", "rejected")} for r in rows])
    return df.groupby("stage", sort=False, as_index=False).sum()


def write_stage_counts(counts: pd.DataFrame, reject_parts: Iterable[pd.DataFrame], *, counts_out: str | Path,
                       rejects_out: str | Path, what: str) -> pd.DataFrame:
    """A method's `stage_counts.tsv` (stage, in, out, rejected: what `groundflow status` reads) and
    its rejects table, every rejected record with its stage and reason, written atomically; the
    records on file must be exactly as many as the stages count rejected (AssertionError naming
    `what` otherwise). Returns the rejects."""
    from groundflow.io.schemas import table_schema

    rejects = _concat(list(reject_parts), rejects_frame(""))
    counted = int(counts["rejected"].sum())
    if len(rejects) != counted:
        raise AssertionError(f"{what}: {len(rejects)} rejects on file, but the stages count {counted}")
    atomic_write_text(counts_out, counts.to_csv(sep="\t", index=False))
    write_table(rejects, rejects_out, schema=table_schema("rejects"))
    return rejects
