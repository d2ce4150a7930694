"""The adapter every Snakemake stage script goes through.

A script builds its models once, then hands `StageJob.run` a function over a chunk of records.
The job reads the input table, runs the chunks with resume checkpoints, checks the accounting
invariant (in = out + rejected), and writes kept records, rejects and counts atomically.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from groundflow.io.artifacts import atomic_write_json, read_table, write_table
from groundflow.io.stage import StageResult, check_accounting, publish_chunk_files, run_chunked
from groundflow.models.spec import ModelSpec, offline_hub

log = logging.getLogger("groundflow")


def setup_logging(log_file: str | None) -> None:
    """Log to stderr and to the job's `log:` file, uncaught errors included.

    Snakemake's "see log" and a SLURM job's log point at the `log:` file, but Python prints an
    uncaught traceback only to stderr; the excepthook sends it through logging, so it lands in
    both places (once each).
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    sys.excepthook = log_uncaught_error


def log_uncaught_error(exc_type, exc, traceback) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, traceback)
        return
    log.critical("job failed: %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, traceback))
    for handler in logging.getLogger().handlers:
        handler.flush()


def train_settings(snakemake) -> dict:
    """A training rule's `params.train` plus the checkout its relative launch files are looked up in
    after the run folder (`train.launch`). Taken from the script's own location, not passed as a
    param: a param holding the checkout's path would make moving the checkout re-run training."""
    from groundflow.train.launch import WORKFLOW_DIR

    return {**snakemake.params.train, WORKFLOW_DIR: str(Path(snakemake.scriptdir).resolve().parents[1])}


class StageJob:
    """One Snakemake job of one stage (usually one shard)."""

    def __init__(self, stage: str, *, records: str, kept: str, rejects: str, counts: str,
                 progress_dir: str | None = None, models: dict | None = None, log_file: str | None = None):
        self.stage = stage
        self.records_path = records
        self.kept_path = kept
        self.rejects_path = rejects
        self.counts_path = counts
        self.progress_dir = progress_dir
        self.models = models or {}
        self.log_file = log_file
        setup_logging(log_file)
        offline_hub()

    @classmethod
    def from_snakemake(cls, smk, stage: str) -> "StageJob":
        return cls(
            stage,
            records=smk.input.records,
            kept=smk.output.kept,
            rejects=smk.output.rejects,
            counts=smk.output.counts,
            progress_dir=smk.params.get("progress_dir"),
            models=smk.params.get("models", {}),
            log_file=smk.log[0] if smk.log else None,
        )

    def model(self, name: str) -> ModelSpec:
        return ModelSpec.from_config(self.models[name])

    @property
    def server_log(self) -> str | None:
        """Where a managed `vllm serve` of this job logs: beside the job's own log."""
        return str(Path(self.log_file).with_suffix(".server.log")) if self.log_file else None

    def run(self, process: Callable[..., StageResult], *, produced_by: dict,
            chunk_size: int = 1 << 30, parent_column: str = "id",
            group_column: str | Callable[[pd.DataFrame], pd.Series] | None = None,
            files_to: str | None = None,
            units: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> dict:
        """Run `process` over the records in chunks (see `run_chunked`) and write the outputs.

        With `units`, the job's units are `units(records)` rather than the records themselves
        (each with its own unique `id`): chunks, resume and the accounting in = out + rejected are
        over those. CINGS inference asks every record in several settings, one unit per record x
        setting (`groundflow.cings.inference.setting_requests`), in one job that loads its model once.

        With `files_to` (a folder output of the rule), `process(chunk, files_dir)` writes its
        files into the chunk's checkpoint and they are put into `files_to` after the tables:
        Snakemake deletes a folder output before it re-runs a killed job, the progress folder it
        does not know, so a resumed job keeps its finished chunks' files as well as their rows.
        """
        start = time.perf_counter()
        if files_to is not None and not self.progress_dir:
            raise ValueError(f"{self.stage}: a stage writing files into {files_to} needs a progress_dir")
        records = read_table(self.records_path)
        log.info("%s: %d input records from %s", self.stage, len(records), self.records_path)
        if units is not None:
            records = units(records)
            log.info("%s: %d units of work", self.stage, len(records))
        result, stats = run_chunked(
            records, process, chunk_size=chunk_size, progress_dir=self.progress_dir,
            params=produced_by, parent_column=parent_column, group_column=group_column,
            chunk_files=files_to is not None,
        )
        counts = check_accounting(self.stage, records["id"], result)
        write_table(result.rejects, self.rejects_path)
        write_table(result.kept, self.kept_path)
        if files_to is not None:
            n_files = publish_chunk_files(self.progress_dir, stats["chunks"], files_to)
            log.info("%s: %d files into %s", self.stage, n_files, files_to)
        summary = {**counts, "kept_rows": len(result.kept), **stats,
                   "seconds": round(time.perf_counter() - start, 3), "produced_by": produced_by}
        atomic_write_json(self.counts_path, summary)
        log.info("%s: in %d = out %d + rejected %d (%d output rows; %d/%d chunks reused)",
                 self.stage, counts["in"], counts["out"], counts["rejected"], len(result.kept),
                 stats["chunks_reused"], stats["chunks"])
        if len(result.rejects):
            top = result.rejects["reason"].str.slice(0, 60).value_counts().head(3)
            log.info("%s: top reject reasons:\n%s", self.stage, top.to_string())
        if self.progress_dir:
            shutil.rmtree(self.progress_dir, ignore_errors=True)
        return summary
