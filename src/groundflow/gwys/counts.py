"""GWYS' stage counts and rejects in one table each (`groundflow status` reads them): every data
stage (SFT data, the pool, each eval set), the rollouts (summed over shards) and each GRPO run's
trained rows (a row the trainer skips, video or an unreadable image, with its reason). Light: no torch."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from groundflow.io.artifacts import read_table
from groundflow.io.stage import write_stage_counts

log = logging.getLogger(__name__)

COLUMNS = ["stage", "in", "out", "rejected"]


def _read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _rejects(path: str | Path, stage: str) -> pd.DataFrame:
    rejects = read_table(path)
    return pd.DataFrame({"stage": stage, "id": rejects["id"].astype(str), "reason": rejects["reason"].astype(str)})


def stage_row(stage: str, counts: Sequence[Mapping]) -> dict:
    """One stage's in / out / rejected, summed over its jobs (shards), checked to add up."""
    row = {"stage": stage, **{k: int(sum(int(c[k]) for c in counts)) for k in ("in", "out", "rejected")}}
    if row["in"] != row["out"] + row["rejected"]:
        raise ValueError(f"GWYS stage {stage}: in {row['in']} != out {row['out']} + rejected {row['rejected']}")
    return row


def train_row(variant: str, summary: Mapping) -> tuple[dict, pd.DataFrame]:
    """A GRPO run's rows: the pool rows it was given, those it trained on and those it skipped."""
    skipped = list(summary.get("skipped") or [])
    stage = f"grpo:{variant}"
    row = {"stage": stage, "in": int(summary["records"]), "out": int(summary["trained_records"]), "rejected": len(skipped)}
    if row["in"] != row["out"] + row["rejected"]:
        raise ValueError(f"GWYS stage {stage}: in {row['in']} != out {row['out']} + rejected {row['rejected']}")
    return row, pd.DataFrame({"stage": stage, "id": [str(s.get("id")) for s in skipped],
                              "reason": [str(s.get("reason")) for s in skipped]})


def gather_counts(*, stages: Mapping[str, tuple[Sequence[str], Sequence[str]]], summaries: Mapping[str, str],
                  counts_out: str, rejects_out: str) -> pd.DataFrame:
    """`stages`: stage name -> (its jobs' counts JSON files, their rejects tables), in pipeline
    order; `summaries`: GRPO variant -> train_summary.json. Writes stage_counts.tsv and rejects.parquet."""
    rows, parts = [], []
    for stage, (counts_files, rejects_files) in stages.items():
        rows.append(stage_row(stage, [_read_json(p) for p in counts_files]))
        parts += [_rejects(p, stage) for p in rejects_files]
    for variant, path in summaries.items():
        row, skipped = train_row(variant, _read_json(path))
        rows.append(row)
        parts.append(skipped)
    counts = pd.DataFrame(rows, columns=COLUMNS)
    write_stage_counts(counts, parts, counts_out=counts_out, rejects_out=rejects_out, what="GWYS")
    log.info("GWYS stages:\n%s", counts.to_string(index=False))
    return counts
